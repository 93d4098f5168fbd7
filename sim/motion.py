"""Road-like motion for simulated ambulances, with no I/O and no clock.

Vehicles drive on a street grid around central Bangkok. Every sixth grid line
is an expressway: no traffic lights, exits only every third block, cruising at
85-145 km/h (so the 80 and 120 km/h thresholds are crossed). The other lines
are city streets at 25-65 km/h with traffic lights that are red at about a
third of the crossings. Vehicles accelerate and brake with bounded rates, slow
down for turns and brake to a stop before a red light.

The model advances in fixed steps of simulated time (``Vehicle.step(dt)``), so
a run is reproducible from its seed and a long run can be computed in
milliseconds; the caller decides how simulated time maps to wall time.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

CENTER_LAT = 13.7563
CENTER_LON = 100.5018
BLOCK_M = 450.0  # distance between two neighbouring crossings
EXPRESSWAY_EVERY = 6  # grid lines
EXIT_EVERY = 3  # blocks between expressway exits
GRID_RADIUS = 24  # blocks from the centre: about 11 km, inside the city

ACCEL = 2.5  # m/s², an ambulance pulling away
BRAKE = 3.5  # m/s², comfortable braking
HARD_BRAKE = 7.0  # m/s², the most the model ever uses
TURN_SPEED = 18 / 3.6  # m/s through a turn in town
RAMP_SPEED = 45 / 3.6  # m/s leaving or joining an expressway

_M_PER_DEG_LAT = 111_320.0
_M_PER_DEG_LON = _M_PER_DEG_LAT * math.cos(math.radians(CENTER_LAT))
# Unit steps on the grid and the compass heading of each (0 = north, clockwise).
_HEADINGS = {(0, 1): 0.0, (1, 0): 90.0, (0, -1): 180.0, (-1, 0): 270.0}


@dataclass(frozen=True, slots=True)
class Point:
    """Where a vehicle is after a step: degrees, km/h, compass degrees."""

    lat: float
    lon: float
    speed_kmh: float
    heading: float


def _is_expressway(line: int) -> bool:
    return line % EXPRESSWAY_EVERY == 0


class Vehicle:
    """One vehicle on the grid; all randomness comes from its own ``rng``."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.x = rng.randint(-GRID_RADIUS // 2, GRID_RADIUS // 2)
        self.y = rng.randint(-GRID_RADIUS // 2, GRID_RADIUS // 2)
        self.dx, self.dy = rng.choice(list(_HEADINGS))
        self.speed = 0.0  # m/s
        self.wait = 0.0  # seconds left standing (red light, crash)
        self._s = 0.0  # metres travelled along the current edge
        self._begin_edge()

    # -- the current edge: from crossing (x, y) to the next decision point ------------

    @property
    def on_expressway(self) -> bool:
        return _is_expressway(self.y if self.dy == 0 else self.x)

    def _begin_edge(self) -> None:
        rng = self._rng
        if self.on_expressway:
            along = self.x if self.dy == 0 else self.y
            step = self.dx + self.dy
            # Blocks to the next exit in the direction of travel (overpasses in between).
            blocks = (EXIT_EVERY - along % EXIT_EVERY) if step > 0 else (along % EXIT_EVERY)
            self._blocks = blocks or EXIT_EVERY
            self._cruise = rng.uniform(85, 145) / 3.6
        else:
            self._blocks = 1
            self._cruise = rng.uniform(25, 65) / 3.6
        self._length = self._blocks * BLOCK_M
        # What happens at the far end decides the speed we may arrive with.
        self._red = 0.0
        self._turn = self._choose_turn()
        if not self.on_expressway and rng.random() < 0.35:
            self._red = rng.uniform(5, 45)
        if self._red:
            self._arrival_speed = 0.0
        elif self._turn != (self.dx, self.dy):
            self._arrival_speed = RAMP_SPEED if self.on_expressway else TURN_SPEED
        else:
            self._arrival_speed = math.inf

    def _choose_turn(self) -> tuple[int, int]:
        """The direction to take at the end of this edge, staying inside the grid."""
        end_x = self.x + self.dx * self._blocks
        end_y = self.y + self.dy * self._blocks
        straight = (self.dx, self.dy)
        left, right = (-self.dy, self.dx), (self.dy, -self.dx)
        choices = [straight, left, right]
        # Turning onto an expressway is likelier than an ordinary turn: ambulances use them.
        weights = [0.6, 0.2, 0.2]
        if not self.on_expressway:
            for i, (_tx, ty) in enumerate((left, right), start=1):
                if _is_expressway(end_y if ty == 0 else end_x):
                    weights[i] = 0.3
        allowed = [
            (c, w)
            for c, w in zip(choices, weights, strict=True)
            if abs(end_x + c[0]) <= GRID_RADIUS and abs(end_y + c[1]) <= GRID_RADIUS
        ]
        if not allowed:  # a corner of the grid: turn back
            return (-self.dx, -self.dy)
        dirs = [c for c, _ in allowed]
        turn: tuple[int, int] = self._rng.choices(dirs, weights=[w for _, w in allowed])[0]
        return turn

    # -- stepping ----------------------------------------------------------------------

    def step(self, dt: float) -> Point:
        """Advance ``dt`` seconds of simulated time and return the new point."""
        if self.wait > 0:
            self.wait = max(0.0, self.wait - dt)
            self.speed = 0.0
            return self.point()
        remaining = self._length - self._s
        # The fastest speed v that, after moving v*dt, still leaves room to brake at
        # BRAKE down to the arrival speed: v² + 2·BRAKE·dt·v = arrival² + 2·BRAKE·remaining.
        b_dt = BRAKE * dt
        reach = math.sqrt(b_dt**2 + self._arrival_speed**2 + 2 * BRAKE * remaining) - b_dt
        limit = min(self._cruise, reach)
        if self.speed < limit:
            self.speed = min(limit, self.speed + ACCEL * dt)
        else:
            self.speed = max(limit, self.speed - HARD_BRAKE * dt)
        travelled = self.speed * dt
        if self._red and travelled >= remaining - 0.5:  # at the stop line
            self._arrive()
            self.speed = 0.0
            self.wait = self._red
            return self.point()
        self._s += travelled
        while self._s >= self._length:
            overshoot = self._s - self._length
            self._arrive()
            self._s = min(overshoot, self._length)
        return self.point()

    def _arrive(self) -> None:
        """Reach the decision point, take the chosen direction and plan the next edge."""
        self.x += self.dx * self._blocks
        self.y += self.dy * self._blocks
        self.dx, self.dy = self._turn
        self._s = 0.0
        self._begin_edge()

    def stop_for(self, seconds: float) -> None:
        """Stand still for ``seconds`` (after a crash)."""
        self.speed = 0.0
        self.wait = max(self.wait, seconds)

    def point(self) -> Point:
        """The current position, speed and heading."""
        east = (self.x + self.dx * self._s / BLOCK_M) * BLOCK_M
        north = (self.y + self.dy * self._s / BLOCK_M) * BLOCK_M
        return Point(
            lat=CENTER_LAT + north / _M_PER_DEG_LAT,
            lon=CENTER_LON + east / _M_PER_DEG_LON,
            speed_kmh=self.speed * 3.6,
            heading=_HEADINGS[(self.dx, self.dy)],
        )
