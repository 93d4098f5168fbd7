// The alarms panel: every open and acknowledged alarm, newest first, with Acknowledge and
// Resolve (a note required) sent with the page's token; resolved alarms leave it.
//
// Live from the Socket.IO room `alarms` when the token may join it (a fleet-wide token);
// a token limited to some ambulances may not, so the panel then re-reads its ambulances'
// alarms from the read API on every resync and every POLL_MS, and says so. Each resync
// re-reads them all anyway: a change missed while not live is never lost.
//
// A crash already has its banner (alerts.js); a new alarm of another kind is made
// noticeable here instead: its row blinks until it is clicked or handled, and it chimes.

import { ApiError } from "./api.js";
import { PENDING, refusal } from "./outcome.js";

const POLL_MS = 30000;

const stamp = (alarm) => Date.parse(alarm.updated_at || alarm.opened_at) || 0;
const clock = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "?");

export class AlarmPanel {
  constructor({ api, places, elements, ambulanceIds, onSelect, onNew }) {
    this.api = api;
    this.places = places;
    this.el = elements;  // {count, note, list}
    this.ambulanceIds = ambulanceIds;
    this.onSelect = onSelect;
    this.onNew = onNew;
    this.alarms = new Map();  // id -> alarm (open or acknowledged)
    this.rows = new Map();  // id -> row element
    this.liveAt = new Map();  // id -> when the live room last changed it (Date.now())
    this.resolved = new Set();  // ids resolved: never shown again, whatever a late read says
    this.fresh = new Set();  // ids that blink
    this.loaded = false;
    this.live = false;
    this.poller = null;
    this.refusedFleet = false;  // the fleet-wide list was refused (a limited token)
  }

  // Whether the room `alarms` was joined on this connection (null: not known yet).
  setLive(joined, why) {
    this.live = joined;
    clearInterval(this.poller);
    this.poller = null;
    if (joined) {
      this.el.note.hidden = true;
      return;
    }
    this.el.note.hidden = false;
    this.el.note.textContent = `Not live (${why}): re-read from the API on each resync and every ${POLL_MS / 1000} s.`;
    this.poller = setInterval(() => this.load().catch((err) => console.warn("alarms", err)), POLL_MS);
  }

  // The active alarms of every ambulance, or, for a token limited to some (refused the
  // fleet-wide list), of each of its ambulances.
  async read() {
    if (!this.refusedFleet) {
      try {
        return await this.api.activeAlarms();
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 403)) throw err;
        this.refusedFleet = true;  // a token's reach does not change: not asked again
      }
    }
    const each = await Promise.all(this.ambulanceIds().map((id) => this.api.activeAlarms(id)));
    return each.flat();
  }

  // Replaces the panel with a fresh read, keeping what the live room changed meanwhile.
  async load() {
    const started = Date.now();
    const items = await this.read();
    const read = new Map(items.map((alarm) => [alarm.id, alarm]));
    for (const id of [...this.alarms.keys()]) {
      if (!read.has(id) && !((this.liveAt.get(id) ?? 0) >= started)) this.remove(id);
    }
    for (const alarm of read.values()) this.merge(alarm, this.loaded);
    this.loaded = true;
    this.render();
  }

  // A message of the room: {event, alarm}.
  receive({ event, alarm }) {
    this.liveAt.set(alarm.id, Date.now());
    this.merge(alarm, event === "opened");
    this.render();
  }

  // One alarm as read or received: the newer version wins; resolved ones leave.
  merge(alarm, announce) {
    if (this.resolved.has(alarm.id)) return;
    if (alarm.status === "resolved" || alarm.active === false) {
      this.resolved.add(alarm.id);
      this.remove(alarm.id);
      return;
    }
    const known = this.alarms.get(alarm.id);
    if (known && stamp(known) > stamp(alarm)) return;
    this.alarms.set(alarm.id, alarm);
    if (!known && announce && alarm.status === "open") {
      this.fresh.add(alarm.id);
      this.onNew(alarm);
    }
    if (alarm.status !== "open") this.fresh.delete(alarm.id);
  }

  remove(id) {
    this.alarms.delete(id);
    this.fresh.delete(id);
    const row = this.rows.get(id);
    if (row) row.remove();
    this.rows.delete(id);
  }

  // Rows are kept and refilled (a half-typed note survives a live update), newest first.
  render() {
    const ordered = [...this.alarms.values()].sort((a, b) => Date.parse(b.opened_at) - Date.parse(a.opened_at));
    ordered.forEach((alarm, index) => {
      let row = this.rows.get(alarm.id);
      if (!row) {
        row = this.makeRow(alarm.id);
        this.rows.set(alarm.id, row);
      }
      this.fill(row, alarm);
      if (this.el.list.children[index] !== row) this.el.list.insertBefore(row, this.el.list.children[index] || null);
    });
    const open = ordered.filter((a) => a.status === "open").length;
    this.el.count.textContent = ordered.length ? `${open} open · ${ordered.length - open} acknowledged` : "none active";
    this.el.count.classList.toggle("has-open", open > 0);
  }

  makeRow(id) {
    const row = document.createElement("li");
    row.className = "alarm";
    row.dataset.id = id;
    const line = document.createElement("div");
    line.className = "alarm-line";
    const meta = document.createElement("div");
    meta.className = "alarm-meta";
    const actions = document.createElement("div");
    actions.className = "alarm-actions";
    const ack = button("Acknowledge", "ack");
    const resolve = button("Resolve", "resolve");
    actions.append(ack, resolve);
    const form = document.createElement("form");
    form.className = "alarm-resolve";
    form.hidden = true;
    const note = document.createElement("input");
    note.className = "note";
    note.placeholder = "how it was resolved (required)";
    note.setAttribute("aria-label", "resolution note");
    note.maxLength = 1000;
    form.append(note, button("Resolve", "confirm", "submit"), button("Cancel", "cancel"));
    const error = document.createElement("div");
    error.className = "alarm-error";
    error.setAttribute("role", "status");
    row.append(line, meta, actions, form, error);

    row.addEventListener("click", (event) => {
      if (event.target.closest("button, input, form")) return;
      this.fresh.delete(id);
      row.classList.remove("fresh");
      const alarm = this.alarms.get(id);
      if (alarm) this.onSelect(alarm.ambulance_id);
    });
    ack.addEventListener("click", () => this.send(id, () => this.api.acknowledge(id)));
    resolve.addEventListener("click", () => {
      form.hidden = false;
      note.focus();
    });
    form.querySelector(".cancel").addEventListener("click", () => { form.hidden = true; });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = note.value.trim();
      if (!text) {
        error.textContent = "a note is required to resolve";
        note.focus();
        return;
      }
      this.send(id, () => this.api.resolve(id, text));
    });
    return row;
  }

  fill(row, alarm) {
    row.dataset.ambulance = alarm.ambulance_id;
    row.dataset.kind = alarm.kind;
    row.dataset.status = alarm.status;
    row.classList.toggle("fresh", this.fresh.has(alarm.id));
    const [line, meta, actions] = row.children;
    line.replaceChildren();
    const kind = document.createElement("strong");
    kind.textContent = alarm.kind.toUpperCase();
    line.append(kind, ` · ${alarm.ambulance_id} · ${this.where(alarm)}`);
    const by = alarm.status === "acknowledged" && alarm.acknowledged_by ? ` by ${alarm.acknowledged_by}` : "";
    meta.textContent = `opened ${clock(alarm.opened_at)} · ×${alarm.count ?? 1} · ${alarm.status}${by}`;
    actions.querySelector(".ack").hidden = alarm.status !== "open";
  }

  // The address, else the place (a geofence alarm's subject), else the coordinates.
  where(alarm) {
    if (alarm.address) return alarm.address;
    if (alarm.kind === "geofence" && alarm.subject) return this.places.name(alarm.subject);
    if (alarm.location) return `${alarm.location.lat.toFixed(5)}, ${alarm.location.lon.toFixed(5)}`;
    return "unknown place";
  }

  // A command for one alarm: its outcome in the row; the alarm it answers, applied.
  async send(id, command) {
    const row = this.rows.get(id);
    if (!row) return;
    const error = row.querySelector(".alarm-error");
    const buttons = row.querySelectorAll("button");
    for (const b of buttons) b.disabled = true;
    error.textContent = "sending…";
    try {
      const { status, body } = await command();
      error.textContent = status === 202 ? PENDING : "";
      if (status === 200) {
        this.liveAt.set(id, Date.now());
        this.merge(body, false);
        this.render();
      }
    } catch (err) {
      error.textContent = refusal(err);
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  }
}

function button(text, className, type = "button") {
  const element = document.createElement("button");
  element.type = type;
  element.className = className;
  element.textContent = text;
  return element;
}
