// A legacy device on Node's own fetch, for the compatibility tests.
//
//   node legacy_device.mjs --url http://127.0.0.1:5000
//
// Reads one request per stdin line and prints one response per stdout line:
//   {"path": "/api/...", "json": {...}}                 JSON body
//   {"path": "/api/...", "form": {"k": "v"}}           application/x-www-form-urlencoded
//   {"path": "/api/...", "fields": {...}, "files": [{"name": "a.jpg", "type": "image/jpeg",
//    "base64": "..."}]}                                 multipart/form-data, files in `files`
// -> {"status": 200, "body": "<response text>"}
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

const { values } = parseArgs({ options: { url: { type: "string" } } });

async function send(request) {
  let body;
  const headers = {};
  if (request.json !== undefined) {
    body = JSON.stringify(request.json);
    headers["content-type"] = "application/json";
  } else if (request.form !== undefined) {
    body = new URLSearchParams(request.form);
  } else {
    body = new FormData();
    for (const [name, value] of Object.entries(request.fields ?? {})) body.append(name, value);
    for (const file of request.files ?? []) {
      const blob = new Blob([Buffer.from(file.base64, "base64")], { type: file.type });
      body.append("files", blob, file.name);
    }
  }
  const response = await fetch(values.url + request.path, { method: "POST", body, headers });
  return { status: response.status, body: await response.text() };
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  try {
    process.stdout.write(JSON.stringify(await send(JSON.parse(line))) + "\n");
  } catch (err) {
    process.stdout.write(JSON.stringify({ status: 0, body: String(err) }) + "\n");
  }
}
