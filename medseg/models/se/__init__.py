"""Squeeze-and-excitation networks."""
