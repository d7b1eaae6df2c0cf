"""Probe data (tasks.py: a task's activations and labels, cached per hook point) and linear probes (linear.py)."""
