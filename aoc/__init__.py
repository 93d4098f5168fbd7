"""AOC tracking backend: the application core (settings, logging, command line)."""
