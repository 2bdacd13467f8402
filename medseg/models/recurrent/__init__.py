"""Recurrent convolutional networks."""
