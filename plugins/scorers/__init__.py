"""Scorers: one module per scoring method."""
