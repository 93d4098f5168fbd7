#!/bin/sh
# A device publishes one tracking point with its own broker account.
#   aoc device add AMB-17     # prints the account's password once
# The username is the ambulance id; the account may publish only under aoc/AMB-17/.
set -eu
MQTT_HOST=${MQTT_HOST:-127.0.0.1}
MQTT_PORT=${MQTT_PORT:-1883}
AMBULANCE=${AMBULANCE:-AMB-17}
PASSWORD=${PASSWORD:?the password aoc device add printed}
TS=$(date +%s)000  # epoch milliseconds: a redelivered point is then stored once

mosquitto_pub -h "$MQTT_HOST" -p "$MQTT_PORT" -u "$AMBULANCE" -P "$PASSWORD" \
  -i "$AMBULANCE" -q 1 -t "aoc/$AMBULANCE/tracking" \
  -m "{\"lat\": 13.7563, \"lon\": 100.5018, \"speed\": 45.5, \"heading\": 180, \"ts\": $TS}"
