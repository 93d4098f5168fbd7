"""One router per resource: the legacy shim, the read API and health checks."""
