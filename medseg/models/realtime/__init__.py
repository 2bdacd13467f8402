"""Real-time and lightweight segmentation networks (family ``realtime``): ICNet, BiSeNet, ENet and their kin.

One file per architecture; :mod:`medseg.models` imports each model file (one line per architecture). Most were
designed for 2D street scenes at high resolution; each file states which dimensionalities it supports (3D wherever
the design is not tied to RGB images).
"""
