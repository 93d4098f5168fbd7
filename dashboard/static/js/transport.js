// The live stream, and only it: everything the page learns live comes through here.
//
// Socket.IO's coalesced live stream (docs/socketio.md, "The live stream"): the page sends
// `live_subscribe` for the fleet ("*"); a token limited to some ambulances is refused the
// fleet, so it subscribes to its ambulances by id instead (`watch`: the ids the read API
// lists for it). Each `live_states` event carries, once per interval, the latest public
// state of each ambulance updated in it (status changes too: an `offline` status arrives
// as a state with `online: false`); `live_alert` carries a broadcast crash's record at
// once. A subscription ends with the connection: after every reconnect the page
// subscribes again, and only then reports itself live (and resyncs from the read API).
//
// Handlers:
//   onUpdate(update)  update = {id, lat, lon, speed, heading, seen (epoch ms), state, online}
//   onCrash(record)   a crash record, as the read API's /crashes lists them
//   onLive(live, why) true once connected and subscribed; false when the connection is lost.
//                     After a loss the page resyncs from the read API on the next `true`.
//   onLimited()       the token may not watch the fleet: call watch(ids).
//
// Dispatch: the fleet-wide rooms `alarms` and `events` (docs/socketio.md, "Dispatch rooms")
// are joined with `room_join` after every connection (a join ends with the connection too);
// their `data` payloads are JSON text.
//   onRoom(room, joined, why)  the join's answer: a token limited to some ambulances is refused
//   onAlarm(message)           {type: "alarm", event, alarm}, the alarm as the read API has it
//   onEvent(event)             an enter, exit or arrival event, as the read API lists it

const FLEET = "*";
const RETRY_MS = 5000;  // a refused subscription (storage unavailable, say) is asked again

// A public state (the read API's item, the MQTT `state` topic, the live stream).
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
    // Absent from states of an older server: then left as they were (see Fleet.apply).
    dispatch: "destination" in state || "eta" in state || "places" in state
      ? { destination: state.destination ?? null, eta: state.eta ?? null, places: state.places ?? [] }
      : null,
  };
}

const ROOMS = ["alarms", "events"];

export function connect({
  url, token, onUpdate, onCrash, onLive, onLimited,
  onRoom = () => {}, onAlarm = () => {}, onEvent = () => {},
}) {
  // auth, not the URL: the token stays out of the Socket.IO server's request lines.
  const socket = io(url, { auth: { token }, reconnectionDelayMax: 5000 });
  const watched = new Set();
  let limited = false;
  let live = false;
  let retry = null;
  // For the browser tests and a console: what the server answered, what came.
  const seen = { subscription: null, events: 0, states: 0, alerts: 0, rooms: {}, alarms: 0, placeEvents: 0 };

  const setLive = (value, why) => {
    if (value !== live) {
      live = value;
      onLive(value, why);
    }
  };

  // The fleet, or (limited) the watched ids; a new subscription replaces the last.
  function subscribe() {
    clearTimeout(retry);
    if (!socket.connected) return;
    if (limited && !watched.size) {  // nothing readable yet: the next resync lists some
      setLive(true, "connected (limited token, no ambulance yet)");
      return;
    }
    const ambulances = limited ? [...watched] : FLEET;
    socket.emit("live_subscribe", { ambulances }, (answer) => {
      seen.subscription = answer;
      if (!answer || !answer.error) {
        setLive(true, limited ? "connected (limited token)" : "connected");
      } else if (!limited && /limited/.test(answer.error)) {
        onLimited();  // its watch(ids) only collects them: limited is not set yet
        limited = true;
        subscribe();
      } else {
        setLive(false, `subscription refused: ${answer.error}`);
        retry = setTimeout(subscribe, RETRY_MS);
      }
    });
  }

  // The dispatch rooms; the answer is null once joined, else why not.
  function joinRooms() {
    for (const room of ROOMS) {
      socket.emit("room_join", room, (refusal) => {
        seen.rooms[room] = refusal ?? "joined";
        onRoom(room, !refusal, refusal ?? null);
      });
    }
  }

  socket.on("connect", subscribe);
  socket.on("connect", joinRooms);
  socket.on("data", (payload) => {
    if (typeof payload !== "string" || payload.startsWith("room joined:")) return;
    let message;
    try { message = JSON.parse(payload); } catch { return; }
    if (!message || typeof message !== "object") return;
    if (message.type === "alarm" && message.alarm && message.alarm.id) {
      seen.alarms += 1;
      onAlarm(message);
    } else if (message.type === "event" && message.event && message.event.ambulance_id) {
      seen.placeEvents += 1;
      onEvent(message.event);
    }
  });
  socket.on("disconnect", (reason) => setLive(false, `disconnected (${reason})`));
  socket.on("connect_error", (err) => setLive(false, `cannot connect: ${err.message}`));
  socket.on("live_error", ({ message }) => console.warn("live stream", message));

  socket.on("live_states", (event) => {
    if (!event || !Array.isArray(event.states)) return;
    seen.events += 1;
    seen.states += event.states.length;
    for (const state of event.states) {
      const update = state && typeof state === "object" ? fromState(state) : null;
      if (update) onUpdate(update);
    }
  });
  socket.on("live_alert", (record) => {
    if (!record || !record.ambulance_id || !record.location) return;
    seen.alerts += 1;
    onCrash(record);
  });

  return {
    socket,
    seen,
    get live() { return live; },
    get limited() { return limited; },
    // With a limited token: watch these ambulances (subscribed again when the list grows).
    watch(ids) {
      const before = watched.size;
      for (const id of ids) watched.add(id);
      if (limited && watched.size !== before) subscribe();
    },
    close() { clearTimeout(retry); socket.close(); },
  };
}
