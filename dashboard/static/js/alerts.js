// Crash alerts: a prominent banner per crash, naming the ambulance and the place, with a
// link to the static map; a repeating sound that can be muted; it stays until dismissed.
// Alerts are put in the page at once (not on an animation frame), so one that arrives
// while the tab is hidden is there when the dispatcher looks; the tab's title counts them.

const BEEP_EVERY_MS = 4000;

export function place(crash) {
  const detail = crash.location_detail || {};
  const at = crash.location ? `${crash.location.lat.toFixed(5)}, ${crash.location.lon.toFixed(5)}` : "unknown place";
  return detail.address ? `${detail.address} (${at})` : at;
}

export function crashLine(crash) {
  const when = new Date(crash.count_datetime).toLocaleString();
  const speed = crash.speed === null || crash.speed === undefined ? "" : ` · ${crash.speed.toFixed(1)} km/h`;
  return `${when} · ${crash.ambulance_id} · ${place(crash)}${speed}`;
}

// One crash, live or read back: its ambulance and time (what its stored id is made of).
export const crashKey = (crash) => `${crash.ambulance_id}:${Date.parse(crash.count_datetime)}`;

export class Alerts {
  constructor({ container, list, muteButton, onShow }) {
    this.container = container;
    this.list = list;
    this.muteButton = muteButton;
    this.onShow = onShow;
    this.open = new Map();  // key -> banner element
    this.known = new Set();  // crash keys alerted or listed
    this.muted = localStorage.getItem("aoc-muted") === "1";
    this.audio = null;
    this.beeper = null;
    this.title = document.title;
    muteButton.addEventListener("click", () => this.setMuted(!this.muted));
    // Browsers start sound only after the user touched the page (kiosks: launch the browser
    // with --autoplay-policy=no-user-gesture-required); the first touch unlocks it.
    for (const event of ["pointerdown", "keydown"]) {
      document.addEventListener(event, () => this.audio && this.audio.resume(), { capture: true });
    }
    this.setMuted(this.muted);
  }

  setMuted(muted) {
    this.muted = muted;
    localStorage.setItem("aoc-muted", muted ? "1" : "0");
    this.muteButton.textContent = muted ? "Sound off" : "Sound on";
    this.muteButton.setAttribute("aria-pressed", String(muted));
    this.sound();
  }

  // Recent crashes, newest first, listed without an alert (the page's load).
  listRecent(crashes) {
    for (const crash of [...crashes].reverse()) {
      if (!this.known.has(crashKey(crash))) {
        this.known.add(crashKey(crash));
        this.addToList(crash);
      }
    }
  }

  // A crash to alert on (live, or read back after a gap): once per crash key.
  raise(crash) {
    const key = crashKey(crash);
    if (this.known.has(key)) return;
    this.known.add(key);
    this.addToList(crash);
    const banner = document.createElement("div");
    banner.className = "alert";
    banner.dataset.ambulance = crash.ambulance_id;
    const text = document.createElement("span");
    text.className = "grow";
    const title = document.createElement("strong");
    title.textContent = `CRASH · ${crash.ambulance_id}`;
    const where = document.createElement("span");
    where.className = "place";
    text.append(title, " at ", where, ` · ${new Date(crash.count_datetime).toLocaleTimeString()}`);
    const map = document.createElement("a");
    map.className = "static-map";
    map.target = "_blank";
    map.rel = "noreferrer noopener";
    map.textContent = "static map";
    const show = document.createElement("button");
    show.type = "button";
    show.textContent = "Show";
    show.addEventListener("click", () => this.onShow(crash.ambulance_id));
    const dismiss = document.createElement("button");
    dismiss.type = "button";
    dismiss.className = "dismiss";
    dismiss.textContent = "Dismiss";
    dismiss.addEventListener("click", () => this.dismiss(key));
    banner.append(text, map, show, dismiss);
    this.fill(banner, crash);
    this.container.prepend(banner);
    this.open.set(key, banner);
    this.sound();
  }

  fill(banner, crash) {
    banner.querySelector(".place").textContent = place(crash);
    const link = banner.querySelector(".static-map");
    const image = crash.location_detail && crash.location_detail.image;
    link.hidden = !image;
    if (image) link.href = image;
  }

  dismiss(key) {
    const banner = this.open.get(key);
    if (banner) banner.remove();
    this.open.delete(key);
    this.sound();
  }

  addToList(crash) {
    const item = document.createElement("li");
    item.textContent = crashLine(crash);
    item.addEventListener("click", () => this.onShow(crash.ambulance_id));
    this.list.prepend(item);
    while (this.list.children.length > 50) this.list.lastChild.remove();
  }

  // The title counts open alerts; a beep repeats while any is open and sound is on.
  sound() {
    const count = this.open.size;
    document.title = count ? `(${count}) CRASH · ${this.title}` : this.title;
    const wanted = count > 0 && !this.muted;
    if (wanted && !this.beeper) {
      this.beep();
      this.beeper = setInterval(() => this.beep(), BEEP_EVERY_MS);
    } else if (!wanted && this.beeper) {
      clearInterval(this.beeper);
      this.beeper = null;
    }
  }

  // One beep, for what is noticeable but not a crash (a new alarm of another kind).
  chime() {
    if (!this.muted) this.beep();
  }

  beep() {
    try {
      this.audio = this.audio || new AudioContext();
      const ctx = this.audio;
      if (ctx.state !== "running") return;  // not unlocked yet (see the constructor)
      for (const [start, freq] of [[0, 880], [0.25, 660], [0.5, 880]]) {
        const osc = ctx.createOscillator();
        const gain = ctx.createGain();
        osc.frequency.value = freq;
        gain.gain.value = 0.2;
        osc.connect(gain).connect(ctx.destination);
        osc.start(ctx.currentTime + start);
        osc.stop(ctx.currentTime + start + 0.2);
      }
    } catch (err) {
      console.warn("no sound", err);
    }
  }
}
