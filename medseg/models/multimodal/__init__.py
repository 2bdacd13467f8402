"""Multi-modal family: one encoder path per image modality (dense multi-path U-Net, IVD-Net)."""
