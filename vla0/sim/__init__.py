"""Simulation: Meta-World env adapter, worker pool, expert data collection."""
