// The places (hospitals, stations, other areas) on the fleet map: polygons, and circles
// for points with properties.radius_m, coloured by kind, each named in a tooltip (as text).
//
// They are drawn on the markers' canvas, behind the markers: Leaflet's canvases do not
// pass pointer events to the ones below, so on a canvas of their own under the markers
// their tooltips would never show; on the same one, a click on a marker still finds it.

import { asText } from "./map.js";

export const PLACE_COLOURS = { hospital: "#d81b60", station: "#1e88e5", other: "#6d4c41" };

export const colourOf = (kind) => PLACE_COLOURS[kind] || PLACE_COLOURS.other;

export class Places {
  constructor({ api, fleetMap, onChange = () => {} }) {
    this.api = api;
    this.fleetMap = fleetMap;
    this.onChange = onChange;
    this.byId = new Map();  // id -> feature
    this.layer = L.layerGroup().addTo(fleetMap.map);
  }

  // Reads them again (on load and on every resync) and redraws them.
  async load() {
    const collection = await this.api.places();
    this.byId = new Map(collection.features.map((f) => [f.id, f]));
    this.draw();
    this.onChange(this);
  }

  draw() {
    const renderer = this.fleetMap.renderer;
    this.layer.clearLayers();
    for (const feature of this.byId.values()) {
      const props = feature.properties || {};
      const colour = colourOf(props.kind);
      const style = { renderer, color: colour, weight: 2, fillColor: colour, fillOpacity: 0.15 };
      const shape = L.geoJSON(feature, {
        style: () => style,
        pointToLayer: (point, latlng) => L.circle(latlng, { ...style, radius: Number(props.radius_m) || 0 }),
      });
      shape.eachLayer((layer) => {
        layer.feature = feature;
        layer.bindTooltip(asText(`${props.name ?? feature.id} (${props.kind ?? "place"})`), { sticky: true });
        layer.addTo(this.layer);
        layer.bringToBack();
      });
    }
  }

  // A place's name, else its id (a place removed since the page read them).
  name(id) {
    const feature = this.byId.get(id);
    return feature ? (feature.properties.name ?? id) : id;
  }

  // The live places, by name: for the destination form.
  sorted() {
    return [...this.byId.values()].sort((a, b) => String(a.properties.name).localeCompare(String(b.properties.name)));
  }
}
