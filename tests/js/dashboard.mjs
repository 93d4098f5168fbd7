// A legacy dashboard driven over stdin, for the compatibility tests.
//
//   node dashboard.mjs --url http://127.0.0.1:5050 [--token aoc_...]
//
// Connects with the stock socket.io-client v4 and its default options (HTTP
// long-polling first, then the upgrade to WebSocket), exactly as dashboards do;
// with --token, it presents the token as new dashboards do: io(url, {auth: {token}}).
// Reads JSON commands, one per line, on stdin:
//   {"cmd": "join", "room": "\"332\""}     emit("room_join", room), as dashboards do
//   {"cmd": "leave", "room": "332"}        emit("room_leave", room)
//   {"cmd": "leave", "room": "332", "ack": 7}  the same with an acknowledgement callback,
//        so the test knows the server has handled it (prints {"event": "ack", "id": 7})
//   {"cmd": "live", "ambulances": "*"}     emit("live_subscribe", {ambulances}, ack): the
//        live stream (docs/socketio.md); prints {"event": "live_ack", "answer": <ack>}
//   {"cmd": "close"}                       disconnect and exit
// Prints one JSON object per line on stdout: {"event": "open", "transport": ...} (Engine.IO),
// {"event": "connect", "transport": ...},
// {"event": "upgrade", "transport": ...}, {"event": "data", "data": <payload as received>},
// {"event": "disconnect", "reason": ...}, {"event": "error", "message": ...},
// {"event": "room_error", "room": ..., "message": ...} (a refused room_join),
// {"event": "live_states" | "live_alert" | "live_error", "data": <the object received>}.
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { io } from "socket.io-client";

const { values } = parseArgs({
  options: { url: { type: "string" }, token: { type: "string" } },
});
const print = (event) => process.stdout.write(JSON.stringify(event) + "\n");

const socket = io(values.url, values.token ? { auth: { token: values.token } } : {});
// The Engine.IO connection opens (on its first transport) before the Socket.IO one.
socket.io.on("open", () => {
  const engine = socket.io.engine;
  print({ event: "open", transport: engine.transport.name });
  engine.once("upgrade", () => print({ event: "upgrade", transport: engine.transport.name }));
});
socket.on("connect", () => print({ event: "connect", transport: socket.io.engine.transport.name }));
socket.on("data", (data) => print({ event: "data", data }));
socket.on("room_error", (error) => print({ event: "room_error", ...error }));
for (const name of ["live_states", "live_alert", "live_error"]) {
  socket.on(name, (data) => print({ event: name, data }));
}
socket.on("disconnect", (reason) => print({ event: "disconnect", reason }));
socket.on("connect_error", (err) => print({ event: "error", message: err.message }));

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  if (command.cmd === "join") {
    socket.emit("room_join", command.room);
  } else if (command.cmd === "leave" && command.ack !== undefined) {
    socket.emit("room_leave", command.room, () => print({ event: "ack", id: command.ack }));
  } else if (command.cmd === "leave") {
    socket.emit("room_leave", command.room);
  } else if (command.cmd === "live") {
    socket.emit("live_subscribe", { ambulances: command.ambulances }, (answer) =>
      print({ event: "live_ack", answer }),
    );
  } else if (command.cmd === "close") {
    socket.close();
    process.exit(0);
  } else {
    print({ event: "error", message: `unknown command ${line}` });
  }
});
// The test closed our stdin (or died): do not linger.
lines.on("close", () => {
  socket.close();
  process.exit(0);
});
