// An MQTT client driven over stdin, for the compatibility tests: a dashboard on
// MQTT over WebSocket, or a device on plain MQTT, with the npm `mqtt` package.
//
//   node mqtt_client.mjs --url ws://127.0.0.1:9001 [--id device-332] [--ca ca.crt]
//                        [--username dash-first --password <password>]
//
// --ca: trust only this CA for wss:// and mqtts:// (the host name is verified).
//
// Commands on stdin, one JSON object per line:
//   {"cmd": "subscribe", "topics": ["aoc/+/state"]}   prints {"event": "subscribed", "granted": [...]}
//   {"cmd": "publish", "topic": "aoc/332/tracking", "payload": "<text>", "id": 1}
//        QoS 1; prints {"event": "published", "id": 1} once the broker acknowledged it
//   {"cmd": "close"}
// Every message received prints {"event": "message", "topic", "payload", "retain"}.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import mqtt from "mqtt";

const { values } = parseArgs({
  options: {
    url: { type: "string" },
    id: { type: "string", default: "" },
    ca: { type: "string", default: "" },
    username: { type: "string", default: "" },
    password: { type: "string", default: "" },
  },
});
const print = (event) => process.stdout.write(JSON.stringify(event) + "\n");

const options = { reconnectPeriod: 0 };
if (values.id) options.clientId = values.id;
if (values.ca) options.ca = readFileSync(values.ca);
if (values.username) options.username = values.username;
if (values.password) options.password = values.password;
const client = mqtt.connect(values.url, options);
client.on("connect", () => print({ event: "connect" }));
client.on("error", (err) => print({ event: "error", message: err.message }));
client.on("message", (topic, payload, packet) =>
  print({ event: "message", topic, payload: payload.toString("utf8"), retain: packet.retain }),
);

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  try {
    if (command.cmd === "subscribe") {
      const granted = await client.subscribeAsync(command.topics, { qos: 1 });
      print({ event: "subscribed", granted: granted.map((g) => [g.topic, g.qos]) });
    } else if (command.cmd === "publish") {
      await client.publishAsync(command.topic, command.payload, { qos: 1 });
      print({ event: "published", id: command.id });
    } else if (command.cmd === "close") {
      await client.endAsync();
      process.exit(0);
    } else {
      print({ event: "error", message: `unknown command ${line}` });
    }
  } catch (err) {
    print({ event: "error", message: String(err) });
  }
});
lines.on("close", () => {
  client.end(true);
  process.exit(0);
});
