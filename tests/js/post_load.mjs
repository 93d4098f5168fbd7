// A fixed number of legacy tracking POSTs with autocannon (`aoc bench`, stage "shim").
//
// node post_load.mjs URL AMOUNT CONNECTIONS PREFIX IDS
// Each request's body is a legacy tracking body of ambulance PREFIX<n % IDS>: with
// enough ids no ambulance posts twice in one millisecond, so no point is taken
// for a repeat of another. Prints one JSON line: requests, 2xx, non-2xx,
// errors, and the wall-clock times (epoch ms) of the first request and the last
// answer with the seconds between them (autocannon's own duration is counted in
// whole ticks of a second, too coarse for a short run).
import autocannon from "autocannon";

const [url, amount, connections, prefix, ids] = process.argv.slice(2);
let n = 0;
let first = 0;
let last = 0;
const result = await new Promise((resolve, reject) => {
  const instance = autocannon(
    {
      url: `${url}/api/tracking/postAmbulanceTracking`,
      amount: Number(amount),
      connections: Number(connections),
      requests: [
        {
          method: "POST",
          headers: { "content-type": "application/json" },
          setupRequest: (req) => {
            const id = `${prefix}${String(n % Number(ids)).padStart(5, "0")}`;
            n += 1;
            if (!first) first = Date.now();
            const body = {
              ambulance_id: id,
              tracking_latitude: 13.7563 + (n % 1000) * 1e-5,
              tracking_longitude: 100.5018,
              tracking_speed: 45.5,
              tracking_heading: 180,
            };
            return { ...req, body: JSON.stringify(body) };
          },
        },
      ],
    },
    (error, done) => (error ? reject(error) : resolve(done)),
  );
  instance.on("response", () => {
    last = Date.now();
  });
});
const seconds = (last - first) / 1000;
process.stdout.write(
  JSON.stringify({
    requests: result.requests.total,
    ok: result["2xx"],
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    first,
    last,
    seconds,
  }) + "\n",
);
