// A dashboard on Socket.IO with the stock socket.io-client v4 and a token
// (`aoc token add wall-1`, or `--rooms AMB-17` for some ambulances only).
//   npm install socket.io-client
//   SOCKETIO_URL=http://127.0.0.1:5050 TOKEN=aoc_... AMBULANCE=AMB-17 node dashboard-socketio.mjs
import { io } from "socket.io-client";

const url = process.env.SOCKETIO_URL ?? "http://127.0.0.1:5050";
const ambulance = process.env.AMBULANCE ?? "AMB-17";
const socket = io(url, { auth: { token: process.env.TOKEN } });

socket.on("connect", () => {
  // The ambulance's own room (its tracking points) and its crash records.
  socket.emit("room_join", ambulance);
  socket.emit("room_join", `CRASH_NOTIFY_${ambulance}`);
});
// Every emission is event "data" carrying a JSON string (legacy field names);
// the one exception is the plain text "room joined: <room>" after each join.
socket.on("data", (payload) => {
  if (payload.startsWith("room joined: ")) {
    console.log(payload);
    return;
  }
  const message = JSON.parse(payload);
  console.log(JSON.stringify(message));
});
socket.on("room_error", ({ room, message }) => console.error(`room ${room}: ${message}`));
socket.on("connect_error", (error) => console.error(`cannot connect: ${error.message}`));
