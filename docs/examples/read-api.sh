#!/bin/sh
# The read API with a token (`aoc token add <name>` prints it once).
set -eu
API=${API:-http://127.0.0.1:5000}
TOKEN=${TOKEN:?a token from aoc token add}
AMBULANCE=${AMBULANCE:-AMB-17}

# The fleet, a page at a time (follow next_cursor until it is null).
curl -fsS -H "Authorization: Bearer $TOKEN" "$API/api/v1/ambulances?limit=100"
echo
# One ambulance's 10 newest points (order=oldest for the oldest first).
curl -fsS -H "Authorization: Bearer $TOKEN" \
  "$API/api/v1/ambulances/$AMBULANCE/track?limit=10&order=newest"
echo
