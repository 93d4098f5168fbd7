// The dispatch dashboard: wires the read API, the live stream (transport.js), the fleet
// model, the map and its places, the list, the selected ambulance (and its dispatch),
// the crash alerts and the alarms panel.
//
// The token comes from the page's URL (?token=, as kiosks open it) and is used as a bearer
// header for the read API and in Socket.IO's auth payload, never in another URL.

import { Alerts } from "./alerts.js";
import { AlarmPanel } from "./alarms.js";
import { ApiError, readApi } from "./api.js";
import { Detail } from "./detail.js";
import { DispatchPanel } from "./dispatch.js";
import { Fleet } from "./fleet.js";
import { FleetList } from "./list.js";
import { FleetMap } from "./map.js";
import { Places } from "./places.js";
import { connect, fromState } from "./transport.js";

const RESYNC_EVERY_MS = 60000;  // the fleet re-read from the read API, in case anything was missed
const AGE_EVERY_MS = 5000;  // offline by silence, and "last seen", are redrawn this often
const LIST_EVERY_MS = 250;  // the list re-sorts at most this often
const CRASH_MARGIN_MS = 30000;  // crashes re-read from a little before the connection was lost

const config = JSON.parse(document.getElementById("aoc-config").textContent);
const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);

const api = readApi(token);
const fleet = new Fleet({
  orangeKmh: config.orange_kmh, redKmh: config.red_kmh, offlineSeconds: config.offline_seconds,
});
const fleetMap = new FleetMap($("map"), config, select);
const list = new FleetList({
  container: $("list"), spacer: $("list-spacer"), head: $("list-head"), filter: $("filter"),
  stateFilter: $("state-filter"), fleet, onSelect: select,
});
const alerts = new Alerts({ container: $("alerts"), list: $("crash-list"), muteButton: $("mute"), onShow: select });
const detail = new Detail({
  api, fleet, fleetMap,
  elements: {
    panel: $("detail"), title: $("detail-title"), range: $("range"), state: $("detail-state"),
    chart: $("chart"), episodes: $("episodes"), snapshots: $("snapshots"), crashes: $("detail-crashes"),
    lightbox: $("lightbox"),
  },
  onCrashClick: (crash) => select(crash.ambulance_id),
});
const places = new Places({ api, fleetMap, onChange: () => { dispatch.placesChanged(); alarms.render(); } });
const dispatch = new DispatchPanel({
  api, fleet, places,
  elements: {
    destination: $("destination"), eta: $("eta"), inside: $("inside"), form: $("destination-form"),
    place: $("destination-place"), clear: $("destination-clear"), outcome: $("destination-outcome"),
    events: $("detail-events"),
  },
});
const alarms = new AlarmPanel({
  api, places,
  elements: { count: $("alarm-count"), note: $("alarm-note"), list: $("alarm-list") },
  ambulanceIds: () => [...fleet.byId.keys()],
  onSelect: select,
  // A crash's alarm is announced by its banner already.
  onNew: (alarm) => { if (alarm.kind !== "crash") alerts.chime(); },
});
$("detail-close").addEventListener("click", () => { detail.close(); dispatch.close(); select(null); });

function select(id) {
  fleetMap.select(id);
  list.select(id);
  if (id) {
    detail.show(id);
    dispatch.show(id);
  }
}

// --- drawing: the map as updates are applied, the list and chart at most a few times a second
let listTimer = null;
fleet.onChange((ids) => {
  fleetMap.update(fleet, ids);
  if (listTimer === null) listTimer = setTimeout(() => { listTimer = null; list.refresh(); }, LIST_EVERY_MS);
  $("fleet-count").textContent = `${fleet.byId.size} ambulances`;
  if (dispatch.id && ids.includes(dispatch.id)) dispatch.render();
});
setInterval(() => {
  fleetMap.update(fleet, fleet.byId.keys());
  list.refresh();
}, AGE_EVERY_MS);

// --- the live stream
const liveBadge = $("live");
let transport = null;
let lostAt = Date.now();  // the page's load counts as a gap: read what happened since

function showLive(live, why) {
  liveBadge.className = live ? "live on" : "live off";
  liveBadge.textContent = live ? "LIVE" : `NOT LIVE since ${new Date(lostAt).toLocaleTimeString()}: ${why}`;
  liveBadge.title = why;
}

async function resyncFleet() {
  const states = await api.fleet();
  fleet.resync(states.map(fromState).filter(Boolean));
  if (transport && transport.limited) transport.watch(fleet.byId.keys());
}

// The newest crashes, newest first: of every ambulance, or, for a token limited to some
// (refused the fleet-wide list), of each of its ambulances.
async function recentCrashes(limit, since) {
  try {
    return await api.crashes(undefined, limit, since);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 403)) throw err;
  }
  const each = await Promise.all([...fleet.byId.keys()].map((id) => api.crashes(id, limit, since)));
  return each.flat().sort((a, b) => Date.parse(b.count_datetime) - Date.parse(a.count_datetime)).slice(0, limit);
}

// After (re)connecting: whatever the read API stored while the page was not live.
let resyncs = 0;  // completed, for the browser tests
async function resync(since) {
  const results = await Promise.allSettled([
    resyncFleet(),
    detail.resync(),
    places.load(),
    alarms.load(),
    dispatch.resync(),
    recentCrashes(50, new Date(since - CRASH_MARGIN_MS)).then((crashes) => {
      for (const crash of [...crashes].reverse()) alerts.raise(crash);
    }),
  ]);
  for (const result of results) if (result.status === "rejected") console.warn("resync", result.reason);
  resyncs += 1;
}

// A crash of the live stream: its record, as the read API stores it (address, static map).
function liveCrash(record) {
  alerts.raise(record);  // once: resync's read of the same crash is known by its key
  if (detail.id === record.ambulance_id) detail.loadCrashes(record.ambulance_id);
}

async function start() {
  if (!token) {
    showLive(false, "open this page with ?token=<token>");
    return;
  }
  showLive(false, "connecting");
  try {
    await resyncFleet();
    alerts.listRecent(await recentCrashes(20));
  } catch (err) {
    console.warn("first read", err);
  }
  places.load().catch((err) => console.warn("places", err));
  const url = config.socketio_url || `${location.protocol}//${location.hostname}:${config.socketio_port}`;
  transport = connect({
    url,
    token,
    onUpdate: (update) => {
      fleet.queue(update);
      detail.follow(update.id);
    },
    onCrash: liveCrash,
    onLive: (live, why) => {
      if (!live) lostAt = Date.now();
      showLive(live, why);
      if (live) resync(lostAt);
    },
    onLimited: () => transport.watch(fleet.byId.keys()),
    onRoom: (room, joined, why) => {
      if (room === "alarms") alarms.setLive(joined, why);
      if (room === "events") dispatch.setLive(joined);
    },
    onAlarm: (message) => alarms.receive(message),
    onEvent: (event) => dispatch.receive(event),
  });
  setInterval(() => resyncFleet().catch((err) => console.warn("fleet", err)), RESYNC_EVERY_MS);
}

// For the browser tests and anyone reading the page from a console.
window.aocDashboard = { config, api, fleet, fleetMap, list, detail, alerts, select, places, alarms, dispatch,
  get transport() { return transport; }, get resyncs() { return resyncs; },
};
start();
