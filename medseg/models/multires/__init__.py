"""Multi-resolution U-Nets."""
