"""U-Net variants (family ``unet_variants``): U-Nets with one component changed, an extra path or a pretrained encoder.

LadderNet, U-NetPlus, CE-Net, W-Net, MFP-Unet (a feature pyramid over the decoder levels), the framing U-Net (Haar
wavelet pooling with a high-pass bypass) and the improved U-Net for seabed mineral images.
"""
