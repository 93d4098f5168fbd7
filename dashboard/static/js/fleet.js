// The fleet as the page knows it: the latest state of each ambulance.
//
// Live updates are queued (the newest per ambulance wins) and applied on an animation
// frame, at most every FLUSH_MS, so a fleet of thousands sending every second costs
// ten redraws a second, not one per message. A hidden tab gets no frames: its queue
// holds at most one update per ambulance until the dispatcher looks again.

const FLUSH_MS = 100;  // as the server's coalesced stream: ten pictures a second

export class Fleet {
  constructor({ orangeKmh, redKmh, offlineSeconds }) {
    this.orangeKmh = orangeKmh;
    this.redKmh = redKmh;
    this.offlineMs = offlineSeconds * 1000;
    this.byId = new Map();
    this.pending = new Map();
    this.listeners = [];
    this.frame = null;
    this.flushedAt = -Infinity;
  }

  // Called with the ids changed, once per frame that applied any.
  onChange(listener) { this.listeners.push(listener); }

  queue(update) {
    const queued = this.pending.get(update.id);
    if (!queued || !(queued.seen > update.seen)) this.pending.set(update.id, update);
    if (this.frame === null) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    // At most every FLUSH_MS: a frame that comes sooner waits for the next one.
    const now = performance.now();
    if (now - this.flushedAt < FLUSH_MS) {
      this.frame = requestAnimationFrame(() => this.flush());
      return;
    }
    this.frame = null;
    this.flushedAt = now;
    if (!this.pending.size) return;
    const changed = [];
    for (const update of this.pending.values()) {
      if (this.apply(update)) changed.push(update.id);
    }
    this.pending.clear();
    if (changed.length) this.notify(changed);
  }

  notify(changed) {
    for (const listener of this.listeners) listener(changed);
  }

  // Merges an update; an update older than what is known only fills in what it lacks.
  apply(update) {
    const known = this.byId.get(update.id);
    if (known && known.seen !== null && update.seen !== null && update.seen < known.seen) {
      return false;
    }
    const merged = { ...(known || {}), ...withoutNulls(update) };
    if (update.state === undefined || update.state === null) merged.state = this.speedState(merged.speed);
    this.byId.set(update.id, merged);
    return true;
  }

  // A dispatch command's answer (destination and ETA), applied at once: the state that
  // carries it may come later on the live stream.
  setDispatch(id, destination, eta) {
    const known = this.byId.get(id);
    if (!known) return;
    known.dispatch = { places: [], ...(known.dispatch || {}), destination, eta };
    this.notify([id]);
  }

  // Replaces what is known with a full listing (a resync), keeping newer live states.
  resync(updates) {
    const changed = [];
    for (const update of updates) if (this.apply(update)) changed.push(update.id);
    this.notify(changed);
  }

  speedState(speed) {
    if (speed === null || speed === undefined) return null;
    if (speed > this.redKmh) return "RED";
    if (speed > this.orangeKmh) return "ORANGE";
    return "GREEN";
  }

  // GREEN, ORANGE, RED, or OFFLINE (status offline, or not heard from for offlineSeconds).
  shownState(ambulance, now = Date.now()) {
    if (ambulance.online === false) return "OFFLINE";
    if (ambulance.seen === null || ambulance.seen === undefined) return "OFFLINE";
    if (now - ambulance.seen > this.offlineMs) return "OFFLINE";
    return ambulance.state || "GREEN";
  }
}

function withoutNulls(update) {
  const out = {};
  for (const [name, value] of Object.entries(update)) {
    if (value !== null && value !== undefined) out[name] = value;
  }
  return out;
}
