"""Noise schedulers for the sampling loop."""
