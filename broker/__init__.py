"""The MQTT side: an asyncio client with manual acknowledgement, and Mosquitto's config.

``MqttClient`` is what the bridge consumes and publishes with; ``broker.conf``
renders the project's ``mosquitto.conf`` for a given set of ports.
"""

from broker.client import Message, MqttClient, MqttError

__all__ = ["Message", "MqttClient", "MqttError"]
