// Smoke check of a running AOC stack with the stock clients dashboards use.
//
//   node smoke.mjs [--http http://127.0.0.1:5050] [--mqtt ws://127.0.0.1:9001] [--room tracking] [--seconds 10]
//                  [--token aoc_...]   (a Socket.IO token from `aoc token add`; none: legacy mode)
//
// Joins a legacy Socket.IO room and subscribes to the outbound MQTT topics,
// prints what arrives, and exits 0 if both sides delivered at least one message
// (run `aoc simulate` next to it), 1 otherwise.
import { parseArgs } from "node:util";
import mqtt from "mqtt";
import { io } from "socket.io-client";

const { values } = parseArgs({
  options: {
    http: { type: "string", default: "http://127.0.0.1:5050" },
    mqtt: { type: "string", default: "ws://127.0.0.1:9001" },
    room: { type: "string", default: "tracking" },
    seconds: { type: "string", default: "10" },
    token: { type: "string" },
  },
});

const counts = { socketio: 0, mqtt: 0 };
const socket = io(values.http, {
  transports: ["websocket"],
  reconnection: false,
  ...(values.token ? { auth: { token: values.token } } : {}),
});
socket.on("connect", () => socket.emit("room_join", values.room));
socket.on("data", (payload) => {
  // Legacy semantics: every payload is a JSON string, except the join acknowledgement.
  if (typeof payload === "string" && payload.startsWith("room joined:")) return;
  counts.socketio += 1;
  if (counts.socketio <= 3) console.log("socket.io", values.room, payload);
});
socket.on("connect_error", (err) => console.error("socket.io error:", err.message));

const client = mqtt.connect(values.mqtt, { reconnectPeriod: 0 });
client.on("connect", () => client.subscribe(["aoc/+/state", "aoc/+/alert"], { qos: 1 }));
client.on("message", (topic, payload) => {
  counts.mqtt += 1;
  if (counts.mqtt <= 3) console.log("mqtt", topic, payload.toString());
});
client.on("error", (err) => console.error("mqtt error:", err.message));

setTimeout(() => {
  socket.close();
  client.end(true);
  console.log(`received: socket.io ${counts.socketio}, mqtt ${counts.mqtt}`);
  process.exit(counts.socketio > 0 && counts.mqtt > 0 ? 0 : 1);
}, Number(values.seconds) * 1000);
