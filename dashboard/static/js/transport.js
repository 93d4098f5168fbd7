// The live stream, and only it: everything the page learns live comes through here.
//
// Today: Socket.IO's legacy rooms (docs/socketio.md). The page joins `tracking` (every
// tracking point) and `crash` (every broadcast crash); a token limited to some ambulances
// may not join those, so it watches their own rooms instead (`watch`). Each event is
// handed on as one plain update; the page applies them once per animation frame.
//
// To move to a coalesced stream (one event per interval carrying the latest public state
// of every ambulance updated in it), change `connect` below: subscribe to that event and
// call `onUpdate(fromState(state))` for each state it carries. Nothing else changes.
//
// Handlers:
//   onUpdate(update)  update = {id, lat, lon, speed, heading, seen (epoch ms), seq?, state?, online?}
//   onCrash(crash)    crash = {id, lat, lon, speed (km/h), seen}
//   onLive(live, why) true once connected and subscribed; false when the connection is lost.
//                     After a loss the page resyncs from the read API on the next `true`.
//   onLimited()       the token may not join the shared rooms: call watch(ids).

const TRACKING_ROOM = "tracking";
const CRASH_ROOM = "crash";
const CRASH_NOTIFY = "CRASH_NOTIFY_";

const number = (value) => (value === undefined || value === null || value === "" ? null : Number(value));

// A tracking payload (an MQTT device's, or a legacy body whose numbers may be strings).
export function fromTracking(body) {
  const lat = number(body.tracking_latitude);
  const lon = number(body.tracking_longitude);
  if (!body.ambulance_id || !Number.isFinite(lat) || !Number.isFinite(lon)) return null;
  return {
    id: String(body.ambulance_id),
    lat,
    lon,
    speed: number(body.tracking_speed),
    heading: number(body.tracking_heading),
    seen: number(body.ts) ?? Date.now(),
    seq: number(body.seq),
    online: true,
  };
}

// A public state (the read API's item, the MQTT `state` topic, the coalesced stream).
export function fromState(state) {
  if (!state.ambulance_id) return null;
  return {
    id: state.ambulance_id,
    lat: state.location ? state.location.lat : null,
    lon: state.location ? state.location.lon : null,
    speed: state.speed ?? null,
    heading: state.heading ?? null,
    seen: state.last_seen ? Date.parse(state.last_seen) : null,
    state: state.state ?? null,
    online: state.online,
  };
}

// A crash payload of room `crash`, or a stored crash record of CRASH_NOTIFY_<id>.
function fromCrash(body) {
  if (body.location) {  // a crash record
    return {
      id: body.ambulance_id, lat: body.location.lat, lon: body.location.lon,
      speed: number(body.speed), seen: Date.parse(body.count_datetime),
    };
  }
  const point = fromTracking(body);
  if (!point) return null;
  // A legacy device posts its crash speed in m/s (docs/legacy.md).
  const speed = point.speed === null || body.speed_unit === "km/h" ? point.speed : point.speed * 3.6;
  return { id: point.id, lat: point.lat, lon: point.lon, speed, seen: point.seen };
}

export function connect({ url, token, onUpdate, onCrash, onLive, onLimited }) {
  // auth, not the URL: the token stays out of the Socket.IO server's request lines.
  const socket = io(url, { auth: { token }, reconnectionDelayMax: 5000 });
  const watched = new Set();
  let limited = false;
  let live = false;

  const setLive = (value, why) => {
    if (value !== live) {
      live = value;
      onLive(value, why);
    }
  };

  socket.on("connect", () => {
    if (limited) {
      for (const id of watched) join(id);
      setLive(true, "connected");
    } else {
      socket.emit("room_join", TRACKING_ROOM);
      socket.emit("room_join", CRASH_ROOM);
    }
  });
  socket.on("disconnect", (reason) => setLive(false, `disconnected (${reason})`));
  socket.on("connect_error", (err) => setLive(false, `cannot connect: ${err.message}`));
  socket.on("room_error", ({ room, message }) => {
    if (room === TRACKING_ROOM && !limited) {
      limited = true;
      onLimited();
      setLive(true, "connected (limited token)");
    } else if (room !== CRASH_ROOM) {
      console.warn("room refused", room, message);
    }
  });

  socket.on("data", (payload) => {
    if (typeof payload !== "string") return;
    if (payload === `room joined: ${TRACKING_ROOM}`) {
      setLive(true, "connected");
      return;
    }
    if (payload.startsWith("room joined: ")) return;
    let body;
    try { body = JSON.parse(payload); } catch { return; }
    if (body === null || typeof body !== "object") return;
    // Room `crash` and CRASH_NOTIFY_<id> carry crashes; the others tracking points.
    // A crash body has speed_unit (MQTT devices) or a record's location; a legacy
    // crash body is told apart by the room only, which Socket.IO does not name:
    // legacy crash bodies therefore arrive as points too (and as crash records).
    if (body.speed_unit !== undefined || body.location_detail !== undefined) {
      const crash = fromCrash(body);
      if (crash) onCrash(crash);
      return;
    }
    const update = fromTracking(body);
    if (update) onUpdate(update);
  });

  function join(id) {
    socket.emit("room_join", id);
    socket.emit("room_join", CRASH_NOTIFY + id);
  }

  return {
    socket,
    get live() { return live; },
    get limited() { return limited; },
    // With a limited token: watch these ambulances' own rooms.
    watch(ids) {
      for (const id of ids) {
        if (!watched.has(id)) {
          watched.add(id);
          if (socket.connected) join(id);
        }
      }
    },
    close() { socket.close(); },
  };
}
