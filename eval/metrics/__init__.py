"""Scoring functions, one benchmark convention per module."""
