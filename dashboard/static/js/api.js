// The read API (/api/v1), with the page's token as a bearer header (kept out of URLs).
// Every listing follows next_cursor: what it returns is complete. Dispatch commands
// (a destination, acknowledging or resolving an alarm) go through `command`.

export class ApiError extends Error {
  constructor(status, detail, text = detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.text = text;  // the API's own words (its `detail` when a string), to show as they are
  }
}

// An error answer as an ApiError: the detail as text (a validation list as JSON).
async function failure(response) {
  let detail = response.statusText;
  let text = detail;
  try {
    const body = (await response.json()).detail;
    detail = JSON.stringify(body);
    text = typeof body === "string" ? body : detail;
  } catch { /* not JSON */ }
  return new ApiError(response.status, detail, text);
}

export function readApi(token, base = "") {
  async function get(path, params = {}) {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null) query.set(name, String(value));
    }
    const url = `${base}/api/v1${path}${query.size ? `?${query}` : ""}`;
    const response = await fetch(url, {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
      referrerPolicy: "no-referrer",
    });
    if (!response.ok) throw await failure(response);
    return response.json();
  }

  // A dispatch command: {status, body} for 200 (applied) and 202 (published, pending);
  // an ApiError otherwise (403: not a dispatch token; 409: refused; 503: broker down).
  async function command(method, path, body) {
    const response = await fetch(`${base}/api/v1${path}`, {
      method,
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
      cache: "no-store",
      referrerPolicy: "no-referrer",
    });
    if (!response.ok) throw await failure(response);
    return { status: response.status, body: await response.json() };
  }

  // Every page of a listing, up to `max` items.
  async function all(path, params, max = Infinity) {
    const items = [];
    let cursor = null;
    do {
      const page = await get(path, { ...params, cursor });
      items.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor && items.length < max);
    return items;
  }

  const id = (ambulanceId) => encodeURIComponent(ambulanceId);
  return {
    // The latest state of every ambulance.
    fleet: () => all("/ambulances", { limit: 1000 }),
    // Track points in [since, until), oldest first.
    track: (ambulanceId, since, until) => all(`/ambulances/${id(ambulanceId)}/track`, {
      since: since && since.toISOString(),
      until: until && until.toISOString(),
      order: "oldest",
      limit: 1000,
    }, 50000),
    // The newest crashes (of one ambulance, or of all), newest first.
    crashes: (ambulanceId, limit = 20, since) => get("/crashes", {
      ambulance_id: ambulanceId, newest_first: true, limit, since: since && since.toISOString(),
    }).then((page) => page.items),
    snapshots: (ambulanceId, limit = 6) => get(`/ambulances/${id(ambulanceId)}/snapshots`, { limit }),
    // The places, as a GeoJSON FeatureCollection.
    places: () => get("/places"),
    // The open and acknowledged alarms (of one ambulance, or of all), newest first.
    activeAlarms: (ambulanceId) => all("/alarms", { status: "active", ambulance_id: ambulanceId, limit: 1000 }),
    // One ambulance's newest events at places (enter, exit, arrival).
    events: (ambulanceId, limit = 10) => get("/events", { ambulance_id: ambulanceId, limit })
      .then((page) => page.items),
    // Dispatch commands.
    setDestination: (ambulanceId, target) => command("PUT", `/ambulances/${id(ambulanceId)}/destination`, target),
    acknowledge: (alarmId, note) => command("POST", `/alarms/${encodeURIComponent(alarmId)}/ack`, note ? { note } : {}),
    resolve: (alarmId, note) => command("POST", `/alarms/${encodeURIComponent(alarmId)}/resolve`, { note }),
  };
}
