// The selected ambulance's dispatch: its destination (who set it, arrived or not), the
// ETA the bridge computed, the places it is in, a form to send it to a place or clear
// its destination, and its recent events at places.
//
// Destination, ETA and places come with its state (the live stream, the fleet read);
// a command's answer is applied at once too. Events are read from the API on selection
// and on every resync, then come live from the room `events`; a token that may not join
// it (limited to some ambulances) re-reads them every POLL_MS instead.

import { PENDING, refusal } from "./outcome.js";

const EVENTS_SHOWN = 10;
const POLL_MS = 30000;

const clock = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "?");
const coordinates = (loc) => (loc ? `${loc.lat.toFixed(5)}, ${loc.lon.toFixed(5)}` : "unknown point");

export function destinationText(destination) {
  if (!destination) return "no destination";
  const name = destination.name || coordinates(destination.location);
  const arrived = destination.arrived_at ? `arrived ${clock(destination.arrived_at)}` : "not arrived";
  return `${name} · set by ${destination.set_by ?? "?"} at ${clock(destination.set_at)} · ${arrived}`;
}

export function etaText(eta, destination) {
  if (destination && destination.arrived_at) return "ETA: arrived";
  if (!eta) return destination ? "ETA: not known yet" : "";
  const km = (eta.distance_m / 1000).toFixed(1);
  const minutes = Math.max(0, Math.round(eta.seconds / 60));
  const at = new Date(eta.arrive_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return `ETA: ${km} km · ${minutes} min (arrives ${at}) · at ${eta.speed_kmh} km/h (${eta.speed_basis})`;
}

export class DispatchPanel {
  constructor({ api, fleet, places, elements }) {
    this.api = api;
    this.fleet = fleet;
    this.places = places;
    this.el = elements;  // {destination, eta, inside, form, place, clear, outcome, events}
    this.id = null;
    this.events = [];
    this.poller = null;
    elements.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const placeId = elements.place.value;
      if (!placeId) {
        elements.outcome.textContent = "choose a place first";
        return;
      }
      this.send({ place_id: placeId });
    });
    elements.clear.addEventListener("click", () => this.send(null));
  }

  show(id) {
    this.id = id;
    this.events = [];
    this.el.outcome.textContent = "";
    this.render();
    this.loadEvents(id);
  }

  close() { this.id = null; }

  // The page's places changed: the choice of destinations with them.
  placesChanged() {
    const chosen = this.el.place.value;
    const first = document.createElement("option");
    first.value = "";
    first.textContent = "choose a place…";
    const options = this.places.sorted().map((feature) => {
      const option = document.createElement("option");
      option.value = feature.id;
      option.textContent = `${feature.properties.name} (${feature.properties.kind})`;
      return option;
    });
    this.el.place.replaceChildren(first, ...options);
    if (this.places.byId.has(chosen)) this.el.place.value = chosen;
    this.render();
  }

  // Whether the room `events` was joined: else events are read every POLL_MS.
  setLive(joined) {
    clearInterval(this.poller);
    this.poller = joined ? null : setInterval(() => this.resync(), POLL_MS);
  }

  resync() {
    if (this.id) this.loadEvents(this.id);
  }

  render() {
    const ambulance = this.id && this.fleet.byId.get(this.id);
    if (!ambulance) return;
    const { destination = null, eta = null, places = [] } = ambulance.dispatch || {};
    this.el.destination.textContent = `Destination: ${destinationText(destination)}`;
    this.el.eta.textContent = etaText(eta, destination);
    this.el.inside.textContent = places.length
      ? `In: ${places.map((id) => this.places.name(id)).join(", ")}`
      : "In: no place";
    this.el.clear.disabled = !destination;
  }

  async send(target) {
    const id = this.id;
    const { outcome } = this.el;
    outcome.textContent = "sending…";
    try {
      const { status, body } = await this.api.setDestination(id, target);
      if (status === 202) {
        outcome.textContent = PENDING;
        return;
      }
      this.fleet.setDispatch(id, body.destination, body.eta);
      outcome.textContent = body.destination ? "applied: destination set" : "applied: destination cleared";
    } catch (err) {
      outcome.textContent = refusal(err);
    }
  }

  async loadEvents(id) {
    try {
      const events = await this.api.events(id, EVENTS_SHOWN);
      if (this.id !== id) return;
      this.events = events;
      this.drawEvents();
    } catch (err) {
      if (this.id === id) this.el.events.textContent = `events unavailable (${err.message})`;
    }
  }

  // An event of the room: listed if it is the selected ambulance's (once).
  receive(event) {
    if (event.ambulance_id !== this.id || this.events.some((e) => e.id === event.id)) return;
    this.events = [event, ...this.events]
      .sort((a, b) => Date.parse(b.at) - Date.parse(a.at))
      .slice(0, EVENTS_SHOWN);
    this.drawEvents();
  }

  drawEvents() {
    const list = this.el.events;
    list.replaceChildren();
    for (const event of this.events) {
      const item = document.createElement("li");
      item.dataset.type = event.type;
      item.textContent = `${clock(event.at)} · ${event.type} · ${event.place_name ?? event.place_id ?? "?"}`;
      list.appendChild(item);
    }
    if (!this.events.length) list.textContent = "no event";
  }
}
