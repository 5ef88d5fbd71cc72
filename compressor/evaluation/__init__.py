"""Scoring: task accuracy, fidelity against the original, latency."""
