"""Benchmarks of the whole pipeline against real processes: ``python -m bench --help``.

Each subcommand starts its own Mosquitto, Redis and ``aoc`` process on free
loopback ports (with ``tests.services``, the same helpers the test suite
uses), drives them, prints its figures and stops everything it started.
Benchmarks are kept out of the test suite on purpose: timings on a shared
2-core machine make poor assertions.
"""
