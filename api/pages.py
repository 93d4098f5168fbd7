"""The legacy status page served at ``GET /`` on both ports."""

from __future__ import annotations

# Legacy monitors look for this exact text.
HOME_TEXT = "AOC-V.2 Tracking Server On"

HOME_HTML = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>AOC-V.2</title></head>
<body><h1>{HOME_TEXT}</h1></body>
</html>
"""
