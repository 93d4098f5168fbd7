"""Hostile input: property-based tests of every parser and HTTP endpoint (issue 9)."""
