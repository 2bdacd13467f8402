"""Residual U-Nets: ResUNet-a (atrous residual units, PSP pooling, multitask heads)."""
