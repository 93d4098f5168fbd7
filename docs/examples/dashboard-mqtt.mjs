// A dashboard on MQTT over WebSocket with MQTT.js and a dashboard account
// (`aoc dashboard add wall` prints the password of dash-wall once).
//   npm install mqtt
//   MQTT_WS_URL=ws://127.0.0.1:9001 MQTT_USERNAME=dash-wall MQTT_PASSWORD=... node dashboard-mqtt.mjs
import mqtt from "mqtt";

const { MQTT_WS_URL, MQTT_USERNAME, MQTT_PASSWORD } = process.env;
const client = mqtt.connect(MQTT_WS_URL ?? "ws://127.0.0.1:9001", {
  username: MQTT_USERNAME ?? "dash-wall", password: MQTT_PASSWORD,
});

client.on("connect", () => {
  // Latest states (retained: one per ambulance at once) and crash alerts.
  client.subscribe(["aoc/+/state", "aoc/+/alert"], { qos: 1 });
});
client.on("message", (topic, payload) => {
  const [, ambulance, kind] = topic.split("/");
  const body = JSON.parse(payload.toString());
  // state: speed in km/h and covered_distance in metres, to 0.1;
  // alert: a crash record, its id in `id`.
  console.log(JSON.stringify({ ambulance, kind, body }));
});
client.on("error", (error) => console.error(`mqtt: ${error.message}`));
