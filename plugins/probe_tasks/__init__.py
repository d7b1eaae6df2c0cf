"""Probe tasks: labelled texts (a label per text or per token) for the probe scorers; one module per task."""
