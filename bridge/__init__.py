"""The bridge: MQTT device messages in; stored records, cache and fan-out out.

``validate.parse`` checks one message, ``processor.Processor`` plans a batch,
``service.Bridge`` runs the consume loop (store, then acknowledge, then fan out).
"""
