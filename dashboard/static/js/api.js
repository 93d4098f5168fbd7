// The read API (/api/v1), with the page's token as a bearer header (kept out of URLs).
// Every listing follows next_cursor: what it returns is complete.

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
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
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = JSON.stringify((await response.json()).detail); } catch { /* not JSON */ }
      throw new ApiError(response.status, detail);
    }
    return response.json();
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
  };
}
