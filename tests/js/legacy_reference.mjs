// The legacy AOC V2 server's shape with no database, as the shim benchmark's reference
// (`aoc bench`, stage "shim"): Express on one port, socket.io on another, and
// POST /api/tracking/postAmbulanceTracking re-emitting the body to rooms
// <ambulance_id> and `tracking` as event `data` (JSON.stringify of the body),
// answering {"success": true}. What the legacy server also did (a MongoDB insert,
// the speed state) is left out: this is the ceiling of its HTTP + emit path.
//
// node legacy_reference.mjs HTTP_PORT IO_PORT; prints "ready", then on "stop"
// (or end of stdin) prints {"requests": N} and exits.
import express from "express";
import { createServer } from "node:http";
import { createInterface } from "node:readline";
import { Server } from "socket.io";

const [httpPort, ioPort] = process.argv.slice(2).map(Number);
const io = new Server({ cors: { origin: "*" } });
io.on("connection", (socket) => {
  socket.on("room_join", (room) => {
    if (typeof room !== "string" || !room) return;
    socket.join(room);
    socket.emit("data", `room joined: ${room}`);
  });
});

let requests = 0;
const app = express();
app.use(express.json());
app.use(express.urlencoded({ extended: false }));
app.post("/api/tracking/postAmbulanceTracking", (req, res) => {
  requests += 1;
  const data = JSON.stringify(req.body);
  io.to(String(req.body.ambulance_id)).emit("data", data);
  io.to("tracking").emit("data", data);
  res.json({ success: true });
});

const http = createServer(app);
await new Promise((resolve) => http.listen(httpPort, "127.0.0.1", resolve));
await new Promise((resolve) => io.listen(ioPort).httpServer.once("listening", resolve));
process.stdout.write("ready\n");
for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() === "stop") break;
}
process.stdout.write(JSON.stringify({ requests }) + "\n");
io.close();
http.close();
process.exit(0);
