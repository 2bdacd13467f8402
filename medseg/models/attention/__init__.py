"""Attention-gated networks."""
