// What the legacy Express server re-emitted for a request body: the oracle of
// the compatibility tests for "the body is re-emitted unchanged".
//
// Each stdin line is {"type": "json" | "form", "raw": "<the request body>"}; each
// stdout line is the JSON string of JSON.stringify(<the body as Express parsed it>):
// express.json() is JSON.parse, express.urlencoded({extended: false}) is querystring.
import { createInterface } from "node:readline";
import querystring from "node:querystring";

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const { type, raw } = JSON.parse(line);
  const body = type === "json" ? JSON.parse(raw) : { ...querystring.parse(raw) };
  process.stdout.write(JSON.stringify(JSON.stringify(body)) + "\n");
}
