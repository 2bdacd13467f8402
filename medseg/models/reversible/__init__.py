"""Reversible (memory-efficient) networks."""
