"""Volumetric medical segmentation networks (family ``volumetric``), 3D first and 2D where the design allows.

GP-Unet (weakly supervised counting), AnatomyNet, 3D RoI-aware U-Net, the optimised 3D Dense-U-Net and the
multi-scale supervised 3D U-Net; each file registers one architecture.
"""
