// The fleet map (Leaflet): one arrow per ambulance, coloured by its state and pointing
// along its heading, drawn on one canvas so thousands stay smooth; the selected
// ambulance's track; tiles from the configured URL, else country outlines and a scale.

export const COLOURS = { GREEN: "#2e7d32", ORANGE: "#ef6c00", RED: "#c62828", OFFLINE: "#8a8a8a" };

// A tooltip's content as text: Leaflet puts a string in as HTML, an element as it is.
// An ambulance id is validated upstream, but it never becomes markup here whatever it holds.
export function asText(text) {
  const span = document.createElement("span");
  span.textContent = String(text);
  return span;
}

// A circle marker that draws an arrow (or a hollow circle when offline, or without heading).
const Arrow = L.CircleMarker.extend({
  _updatePath() {
    const renderer = this._renderer;
    if (!renderer._drawing || this._empty()) return;
    const ctx = renderer._ctx;
    const p = this._point;
    const r = this._radius;
    const { heading, shown, selected } = this.options;
    ctx.beginPath();
    if (heading === null || heading === undefined || shown === "OFFLINE") {
      ctx.arc(p.x, p.y, r * 0.8, 0, Math.PI * 2);
    } else {
      const a = ((heading - 90) * Math.PI) / 180;  // 0° is north, clockwise
      const point = (angle, length) => [p.x + Math.cos(angle) * length, p.y + Math.sin(angle) * length];
      ctx.moveTo(...point(a, r * 1.4));
      ctx.lineTo(...point(a + 2.5, r));
      ctx.lineTo(...point(a + Math.PI, r * 0.4));
      ctx.lineTo(...point(a - 2.5, r));
      ctx.closePath();
    }
    ctx.fillStyle = COLOURS[shown] || COLOURS.GREEN;
    ctx.globalAlpha = shown === "OFFLINE" ? 0.5 : 1;
    ctx.fill();
    ctx.globalAlpha = 1;
    ctx.lineWidth = selected ? 3 : 1;
    ctx.strokeStyle = selected ? "#0d47a1" : "#fff";
    ctx.stroke();
  },
});

export class FleetMap {
  constructor(element, config, onSelect) {
    this.map = L.map(element, { preferCanvas: true, worldCopyJump: true }).setView([13.75, 100.5], 6);
    this.renderer = L.canvas({ padding: 0.2 });
    this.markers = new Map();
    this.onSelect = onSelect;
    this.selected = null;
    this.fitted = false;
    L.control.scale().addTo(this.map);
    if (config.tile_url) {
      L.tileLayer(config.tile_url, { attribution: config.tile_attribution, maxZoom: 19 }).addTo(this.map);
    } else {
      this.addOutlines();
    }
    this.track = L.layerGroup().addTo(this.map);
    // The track on a canvas of its own too, so that it is redrawn only when it changes.
    this.map.createPane("track").style.zIndex = 390;  // under the markers (overlay pane: 400)
    this.trackRenderer = L.canvas({ pane: "track", padding: 0.2 });
  }

  async addOutlines() {
    // world-atlas (Natural Earth, from npm): countries at 1:50m, drawn under the markers.
    try {
      const response = await fetch("/dashboard/vendor/world-atlas/countries-50m.json");
      const world = await response.json();
      const countries = topojson.feature(world, world.objects.countries);
      // A canvas of their own, under the markers': a marker that moves redraws its
      // canvas, and the world's coastlines need not be redrawn with it.
      this.map.createPane("outlines").style.zIndex = 350;
      this.outlines = L.geoJSON(countries, {
        renderer: L.canvas({ pane: "outlines", padding: 0.2 }),
        interactive: false,
        style: { color: "#7d8b99", weight: 1, fillColor: "#f7f4ee", fillOpacity: 1 },
      }).addTo(this.map);
    } catch (err) {
      console.warn("no country outlines", err);
    }
  }

  // Creates or moves the markers of `ids`.
  update(fleet, ids, now = Date.now()) {
    for (const id of ids) {
      const ambulance = fleet.byId.get(id);
      if (!ambulance || ambulance.lat === undefined || ambulance.lon === undefined) continue;
      const shown = fleet.shownState(ambulance, now);
      let marker = this.markers.get(id);
      if (!marker) {
        marker = new Arrow([ambulance.lat, ambulance.lon], {
          renderer: this.renderer, radius: 8, heading: ambulance.heading, shown, selected: id === this.selected,
        });
        marker.bindTooltip(asText(id));
        marker.on("click", () => this.onSelect(id));
        marker.addTo(this.map);
        this.markers.set(id, marker);
      } else {
        marker.options.heading = ambulance.heading;
        marker.options.shown = shown;
        marker.setLatLng([ambulance.lat, ambulance.lon]);  // redraws
      }
    }
    if (!this.fitted && this.markers.size) {
      this.fitted = true;
      const bounds = L.latLngBounds([...this.markers.values()].map((m) => m.getLatLng()));
      this.map.fitBounds(bounds.pad(0.2), { maxZoom: 13 });
    }
  }

  select(id) {
    for (const previous of [this.selected, id]) {
      const marker = previous && this.markers.get(previous);
      if (marker) {
        marker.options.selected = previous === id;
        marker.redraw();
      }
    }
    this.selected = id;
    const marker = id && this.markers.get(id);
    if (marker) {
      marker.bringToFront();
      this.map.setView(marker.getLatLng(), Math.max(this.map.getZoom(), 13));
    }
  }

  // The track as a line, red where over the red threshold, orange over the orange one.
  drawTrack(points, fleet) {
    this.track.clearLayers();
    let run = [];
    let runState = null;
    const flush = () => {
      if (run.length > 1) {
        L.polyline(run, { renderer: this.trackRenderer, color: COLOURS[runState] || "#1565c0", weight: 4, opacity: 0.8, interactive: false }).addTo(this.track);
      }
    };
    for (const point of points) {
      const state = fleet.speedState(point.speed) === "GREEN" ? "TRACK" : fleet.speedState(point.speed);
      const latlng = [point.lat, point.lon];
      if (state !== runState) {
        if (run.length) run.push(latlng);  // segments join
        flush();
        run = [latlng];
        runState = state;
      } else {
        run.push(latlng);
      }
    }
    flush();
  }

  clearTrack() { this.track.clearLayers(); }
}
