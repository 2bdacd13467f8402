"""Multi-modal architectures (family ``multimodal``): one encoder path per channel group, fused inside the network.

The input's channel groups (RGB and depth, or several MRI sequences) each get their own path: ACNet, SSMA, the dense
multi-path U-Net and IVD-Net. :mod:`medseg.models` imports each model file (one line per architecture).
"""
