// One selected ambulance: its track over a chosen range (on the map), a speed chart with
// the orange and red thresholds and its overspeed episodes, its latest snapshots and crashes.
//
// The track is read from the read API, then grows by reading the new points each time the
// live stream updates the ambulance; after a lost connection `resync` reads what was
// stored meanwhile, so the track holds every point.

import { COLOURS } from "./map.js";
import { crashLine } from "./alerts.js";

const SNAPSHOTS_SHOWN = 8;

export class Detail {
  constructor({ api, fleet, fleetMap, elements, onCrashClick }) {
    this.api = api;
    this.fleet = fleet;
    this.fleetMap = fleetMap;
    this.el = elements;
    this.onCrashClick = onCrashClick;
    this.id = null;
    this.points = [];
    this.keys = new Set();
    this.dirty = false;
    this.chart = null;
    this.loading = null;
    this.following = null;  // the read of new points in progress (follow)
    this.followAgain = false;
    elements.range.addEventListener("change", () => this.id && this.show(this.id));
    elements.lightbox.addEventListener("click", () => { elements.lightbox.hidden = true; });
  }

  // Redraws on the next frame (once, however many points came meanwhile).
  changed() {
    if (this.dirty) return;
    this.dirty = true;
    requestAnimationFrame(() => this.render());
  }

  rangeMs() { return Number(this.el.range.value) * 1000; }

  async show(id) {
    this.id = id;
    this.points = [];
    this.keys = new Set();
    this.el.panel.hidden = false;
    this.el.title.textContent = id;
    this.fleetMap.clearTrack();
    const since = new Date(Date.now() - this.rangeMs());
    const loading = (async () => {
      const stored = await this.api.track(id, since);
      if (this.id !== id) return;
      this.merge(stored.map(fromTrackPoint));
      this.changed();
    })();
    this.loading = loading;
    this.loadSnapshots(id);
    this.loadCrashes(id);
    try { await loading; } catch (err) { console.warn("track", err); }
  }

  close() {
    this.id = null;
    this.el.panel.hidden = true;
    this.fleetMap.clearTrack();
  }

  // A live state of some ambulance: if it is the selected one, read its new points. The
  // live stream carries the latest state per interval, not every point (docs/socketio.md),
  // and the chart and episodes need every point: the read API has them by the time the
  // state is sent (the bridge stores, then fans out). One read at a time; states that
  // arrive during a read ask for one more.
  follow(id) {
    if (id !== this.id) return;
    if (this.following) {
      this.followAgain = true;
      return;
    }
    this.following = (async () => {
      try {
        do {
          this.followAgain = false;
          await this.readNewer();
        } while (this.followAgain && this.id === id);
      } catch (err) {
        console.warn("track", err);
      } finally {
        this.following = null;
      }
    })();
  }

  // What was stored since the newest point held (the range if none).
  async readNewer() {
    const id = this.id;
    if (!id) return;
    if (this.loading) await this.loading.catch(() => {});
    if (this.id !== id) return;
    const newest = this.points.length ? this.points[this.points.length - 1].t : Date.now() - this.rangeMs();
    const stored = await this.api.track(id, new Date(newest));
    if (this.id !== id) return;
    this.merge(stored.map(fromTrackPoint));
    this.changed();
  }

  // After a reconnect: the points, crashes and snapshots stored meanwhile.
  async resync() {
    const id = this.id;
    if (!id) return;
    await this.readNewer();
    this.loadCrashes(id);
    this.loadSnapshots(id);
  }

  merge(points) {
    let appended = false;
    for (const point of points) {
      const key = `${point.t}:${point.seq ?? ""}`;
      if (this.keys.has(key)) continue;
      this.keys.add(key);
      this.points.push(point);
      appended = true;
    }
    if (appended) this.points.sort((a, b) => a.t - b.t);
  }

  // Redraws the track and chart when points changed (called once a frame).
  render() {
    this.dirty = false;
    if (!this.id) return;
    const cutoff = Date.now() - this.rangeMs();
    const points = this.points.filter((p) => p.t >= cutoff);
    this.fleetMap.drawTrack(points, this.fleet);
    this.drawChart(points);
    const episodes = overspeed(points, this.fleet.orangeKmh, this.fleet.redKmh);
    this.el.episodes.textContent = episodes.length
      ? episodes.map((e) => `over ${this.fleet.orangeKmh} km/h ${time(e.from)}–${time(e.to)}, max ${e.max.toFixed(1)} km/h`).join("; ")
      : `no overspeed episode in range (${points.length} points)`;
    const ambulance = this.fleet.byId.get(this.id);
    if (ambulance) {
      const shown = this.fleet.shownState(ambulance);
      this.el.state.textContent = `${shown} · ${ambulance.speed !== undefined ? ambulance.speed.toFixed(1) : "?"} km/h · heading ${ambulance.heading ?? "?"}° · ${ambulance.lat?.toFixed(5)}, ${ambulance.lon?.toFixed(5)}`;
    }
  }

  drawChart(points) {
    const data = [points.map((p) => p.t / 1000), points.map((p) => p.speed)];
    if (this.chart) {
      this.chart.setData(data);
      return;
    }
    const fleet = this.fleet;
    const episodesOf = (u) => overspeed(
      u.data[0].map((t, i) => ({ t: t * 1000, speed: u.data[1][i] })), fleet.orangeKmh, fleet.redKmh,
    );
    this.chart = new uPlot({
      width: 390,
      height: 200,
      scales: { y: { range: (u, min, max) => [0, Math.max((max ?? 0) * 1.1, fleet.redKmh + 20)] } },
      series: [{}, { label: "km/h", stroke: "#1565c0", width: 1.5, points: { show: false } }],
      axes: [{}, { label: "km/h" }],
      hooks: {
        drawClear: [(u) => {
          // Overspeed episodes as bands behind the line.
          const { ctx } = u;
          ctx.save();
          for (const e of episodesOf(u)) {
            const x0 = u.valToPos(e.from / 1000, "x", true);
            const x1 = u.valToPos(e.to / 1000, "x", true);
            ctx.fillStyle = e.max > fleet.redKmh ? "rgba(198,40,40,.18)" : "rgba(239,108,0,.18)";
            ctx.fillRect(x0, u.bbox.top, Math.max(2, x1 - x0), u.bbox.height);
          }
          ctx.restore();
        }],
        draw: [(u) => {
          // The thresholds as dashed lines.
          const { ctx } = u;
          ctx.save();
          ctx.setLineDash([6, 4]);
          for (const [limit, colour] of [[fleet.orangeKmh, COLOURS.ORANGE], [fleet.redKmh, COLOURS.RED]]) {
            const y = u.valToPos(limit, "y", true);
            ctx.strokeStyle = colour;
            ctx.beginPath();
            ctx.moveTo(u.bbox.left, y);
            ctx.lineTo(u.bbox.left + u.bbox.width, y);
            ctx.stroke();
          }
          ctx.restore();
        }],
      },
    }, data, this.el.chart);
  }

  async loadSnapshots(id) {
    const box = this.el.snapshots;
    try {
      const snaps = await this.api.snapshots(id);
      if (this.id !== id) return;
      const sets = [snaps.current, ...snaps.history].filter(Boolean);
      const seen = new Set();
      box.replaceChildren();
      for (const set of sets) {
        for (const image of set.images) {
          if (seen.has(image.key) || seen.size >= SNAPSHOTS_SHOWN) continue;
          seen.add(image.key);
          const img = document.createElement("img");
          img.src = image.url;  // signed: works without a header, until it expires
          img.alt = `${id} ${image.name}`;
          img.title = set.created_at || image.name;
          img.referrerPolicy = "no-referrer";
          img.addEventListener("click", () => this.openFull(image.url));
          box.appendChild(img);
        }
      }
      if (!seen.size) box.textContent = "no snapshot";
    } catch (err) {
      box.textContent = `snapshots unavailable (${err.message})`;
    }
  }

  openFull(url) {
    const { lightbox } = this.el;
    lightbox.querySelector("img").src = url;
    lightbox.hidden = false;
  }

  async loadCrashes(id) {
    const list = this.el.crashes;
    try {
      const crashes = await this.api.crashes(id, 10);
      if (this.id !== id) return;
      list.replaceChildren();
      for (const crash of crashes) {
        const item = document.createElement("li");
        item.textContent = crashLine(crash);
        item.addEventListener("click", () => this.onCrashClick(crash));
        list.appendChild(item);
      }
      if (!crashes.length) list.textContent = "no crash";
    } catch (err) {
      list.textContent = `crashes unavailable (${err.message})`;
    }
  }
}

function fromTrackPoint(point) {
  return {
    lat: point.location ? point.location.lat : null,
    lon: point.location ? point.location.lon : null,
    speed: point.speed,
    t: Date.parse(point.count_datetime),
    seq: point.seq,
  };
}

// Contiguous runs of points over `orange`, with their top speed.
export function overspeed(points, orange) {
  const episodes = [];
  let current = null;
  for (const p of points) {
    if (p.speed !== null && p.speed > orange) {
      if (!current) {
        current = { from: p.t, to: p.t, max: p.speed };
        episodes.push(current);
      }
      current.to = p.t;
      current.max = Math.max(current.max, p.speed);
    } else {
      current = null;
    }
  }
  return episodes;
}

const time = (ms) => new Date(ms).toLocaleTimeString();
