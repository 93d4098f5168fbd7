"""Which settings each ``aoc`` command reads: one table, named by ``Settings`` field.

Each command's ``--help`` lists the ``AOC_*`` variables of its fields
(``aoc.settings_help``); a test checks that every field of ``Settings`` is read
by some command and that every name here is a field, so the table cannot name a
setting that is gone or leave a new one undocumented.
"""

from __future__ import annotations

from aoc.config import Settings

LOGS = frozenset({"log_level", "log_format"})
# Production mode's refusal of default secrets (``aoc.safety``) runs before
# every command but `aoc tls` and `aoc config`.
MODE = frozenset({"env"})
BROKER_CLIENT = frozenset({"mqtt_host", "mqtt_port", "mqtt_tls", "mqtt_ca_file"})
# The broker's account manager and the credentials file `aoc up` writes.
ADMIN = BROKER_CLIENT | {
    "data_dir", "credentials_file", "mqtt_admin_username", "mqtt_admin_password",
}
STORE = frozenset({"data_dir", "store_url", "mongodb_database"})
# The audit log of account and token changes lives in the document store.
AUDIT = STORE | {"operator"}
OBJECTS = frozenset({
    "data_dir", "objects_url", "s3_endpoint_url", "s3_region", "s3_access_key", "s3_secret_key",
    "objects_public_url", "spool_dir", "spool_max_bytes", "image_url_ttl_seconds",
})
# What every long-running server reads: its bounds and its /metrics guard.
SERVER = frozenset({
    "bind_host", "http_max_connections", "http_body_timeout", "http_body_min_rate",
    "http_header_timeout", "metrics_token", "metrics_networks", "restart_count",
})
# An MQTT connection of the bridge or of the legacy shim (``aoc.lifecycle._mqtt``).
MQTT_SESSION = BROKER_CLIENT | {
    "mqtt_client_id", "mqtt_keepalive", "mqtt_queue_size", "mqtt_queue_bytes",
}
BRIDGE = MQTT_SESSION | STORE | OBJECTS | {
    "redis_url", "mqtt_username", "mqtt_password", "speed_orange_kmh", "speed_red_kmh",
    "crash_dedup_seconds", "max_clock_ahead_seconds", "google_maps_key", "max_image_bytes",
    "max_upload_files", "dead_letter_payload_bytes", "dead_letter_max_count",
    "dead_letter_max_age_days", "dead_letter_rate", "dead_letter_burst",
    "dead_letter_prune_seconds", "device_rate", "device_burst", "batch_size", "batch_wait_ms",
    "batch_max_bytes", "snap_workers", "snap_buffer_bytes",
    # The retention sweep (bridge.retention) runs beside each bridge.
    "retention_tracking_days", "retention_snapshots_days", "retention_crashes_days",
    "retention_audit_days", "retention_reports_days", "retention_sweep_seconds",
    "retention_batch_size",
    # Several bridges on one shared subscription (`aoc up` runs `bridges`).
    "share_group", "bridges",
    # The dispatch rules (bridge.dispatch).
    "geofence_margin_m", "arrival_radius_m", "eta_window_seconds", "eta_min_speed_kmh",
    "offline_after_seconds", "overspeed_alarm", "geofence_alarms", "places_refresh_seconds",
    # The trips and stops rule (bridge.trips).
    "stop_speed_kmh", "stop_min_seconds",
}
# Tokens, signed image URLs and legacy mode (whose shim publishes on its own account).
ACCESS = frozenset({"secret_key", "legacy_mode", "legacy_networks", "cors_origins"})
HTTP_API = STORE | OBJECTS | ACCESS | MQTT_SESSION | {
    "redis_url", "http_port", "max_concurrent_uploads", "max_image_bytes", "max_upload_files",
    "shim_mqtt_username", "shim_mqtt_password", "public_url", "image_links",
    # The dashboard page: its settings, and the thresholds it colours speeds by.
    "socketio_port", "dashboard_tile_url", "dashboard_tile_attribution",
    "dashboard_offline_seconds", "dashboard_socketio_url", "dashboard_dir",
    "speed_orange_kmh", "speed_red_kmh",
    # Dispatch commands wait this long for the bridge (``api.dispatch_commands``).
    "dispatch_wait_seconds",
}
# http_port: the dashboard's origin, which Socket.IO admits (``api.realtime``).
REALTIME = STORE | ACCESS | {
    "redis_url", "socketio_port", "socketio_max_connections", "http_port",
    "live_interval_ms",
}
SERVE = SERVER | BRIDGE | HTTP_API | REALTIME
# `aoc up` runs Mosquitto and Redis itself and passes its environment to `aoc serve`.
UP = SERVE | ADMIN | {
    "mqtt_bind_host", "mqtt_ws_port", "broker_auth", "mqtt_max_connections", "tls_cert_file",
    "tls_key_file", "mqtt_tls_port", "mqtt_wss_port",
}
TLS = frozenset({
    "data_dir", "tls_hostnames", "mqtt_tls_port",
})

COMMANDS: dict[str, frozenset[str]] = {
    "up": LOGS | MODE | UP,
    "serve": LOGS | MODE | SERVE,
    "bridge": LOGS | MODE | SERVER | BRIDGE | {"bridge_http_port"},
    "api": LOGS | MODE | SERVER | HTTP_API,
    "realtime": LOGS | MODE | SERVER | REALTIME,
    "simulate": LOGS | MODE | ADMIN | AUDIT | {"public_url"},
    "device": LOGS | MODE | ADMIN | AUDIT,
    "dashboard": LOGS | MODE | ADMIN | AUDIT,
    # Writes the service accounts' passwords for docker-compose's services.
    "accounts": LOGS | MODE | ADMIN | AUDIT | {
        "mqtt_ws_port", "mqtt_username", "mqtt_password", "shim_mqtt_username",
        "shim_mqtt_password",
    },
    "tls": LOGS | TLS,
    "token": LOGS | MODE | AUDIT,
    "places": LOGS | MODE | AUDIT,
    # Starts servers of its own on free ports; AOC_* variables of its environment reach
    # them too (AOC_BATCH_WAIT_MS=0 aoc bench measures that setting).
    "bench": LOGS | {"mongodb_database"},
    # Shows them all.
    "config": frozenset(Settings.model_fields),
}


def fields(command: str) -> list[str]:
    """The settings ``command`` reads, in the order ``Settings`` declares them."""
    used = COMMANDS.get(command, frozenset())
    return [name for name in Settings.model_fields if name in used]
