"""The device simulator: a tool that drives the system, not part of it.

``aoc simulate`` runs it (importing it only then); the runtime (``aoc serve``,
``bridge``, ``api``, ``realtime``, ``up``) never imports this package.
``sim.fleet`` publishes the traffic, ``sim.motion`` moves the vehicles,
``sim.jpeg`` makes their camera frames.
"""
