// Live-stream clients for `python -m bench coalesce --clients-impl node` (bench/coalesce.py).
//
//   node live_bench.mjs --url http://127.0.0.1:5050 --clients 50 --prefix CO-abc- [--select]
//
// Opens --clients stock socket.io-client connections (WebSocket only), each subscribed to
// the whole fleet (or, with --select, to the ids read from the first stdin line, a JSON
// list), then prints {"event": "ready"}. Stdin commands, one per line:
//   {"cmd": "go", "from": <wall ms>}   staleness counts from then on
//   {"cmd": "stop"}                    print the summary and exit
// The summary (one JSON line) has what bench/coalesce.py's Python clients report:
// per client its points (states newer than the last of their ambulance), events and
// latest last_seen per ambulance (ms); repeats; and staleness histograms in 1 ms buckets,
// as sparse [[ms, count], ...], from one client in --sample-every.
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { io } from "socket.io-client";

const { values } = parseArgs({
  options: {
    url: { type: "string" },
    clients: { type: "string", default: "50" },
    prefix: { type: "string", default: "" },
    select: { type: "boolean", default: false },
    "sample-every": { type: "string", default: "4" },
  },
});
const print = (value) => process.stdout.write(JSON.stringify(value) + "\n");
const count = Number(values.clients);
const sampleEvery = Number(values["sample-every"]);
const prefix = values.prefix;
const device = new Map();
const server = new Map();
const bump = (hist, ms) => {
  const bucket = Math.max(0, Math.floor(ms));
  hist.set(bucket, (hist.get(bucket) || 0) + 1);
};
let measureFrom = Infinity;
let repeats = 0;
const tallies = [];
const sockets = [];
const lines = createInterface({ input: process.stdin });
const input = lines[Symbol.asyncIterator]();

async function main() {
  let wanted = "*";
  if (values.select) wanted = JSON.parse((await input.next()).value);
  for (let n = 0; n < count; n++) {
    const tally = { points: 0, events: 0, latest: new Map() };
    tallies.push(tally);
    const sampled = n % sampleEvery === 0;
    const socket = io(values.url, { transports: ["websocket"], reconnection: false });
    socket.on("live_states", (data) => {
      const now = Date.now();
      tally.events += 1;
      const timed = sampled && now >= measureFrom;
      if (timed) bump(server, now - Date.parse(data.at));
      for (const state of data.states) {
        const aid = state.ambulance_id;
        if (!aid.startsWith(prefix)) continue;
        const seen = state.last_seen;
        if (seen > (tally.latest.get(aid) || "")) {
          tally.latest.set(aid, seen);
          tally.points += 1;
          if (timed) bump(device, now - Date.parse(seen));
        } else {
          repeats += 1;
        }
      }
    });
    await new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", reject);
    });
    const answer = await socket.timeout(30000).emitWithAck("live_subscribe", { ambulances: wanted });
    if (answer.error) throw new Error(`live_subscribe refused: ${answer.error}`);
    sockets.push(socket);
  }
  print({ event: "ready" });
  for await (const line of input) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    if (command.cmd === "go") measureFrom = command.from;
    if (command.cmd === "stop") break;
  }
  for (const socket of sockets) socket.close();
  const summary = {
    event: "summary",
    points: tallies.map((t) => t.points),
    events: tallies.map((t) => t.events),
    latest: tallies.map((t) => Object.fromEntries([...t.latest].map(([a, s]) => [a, Date.parse(s)]))),
    repeats,
    device: [...device],
    server: [...server],
  };
  // Exit once written: a pipe takes a large line in several writes.
  process.stdout.write(JSON.stringify(summary) + "\n", () => process.exit(0));
}

main().catch((err) => {
  print({ event: "error", message: String(err) });
  process.exit(1);
});
