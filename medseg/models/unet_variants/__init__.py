"""U-Net variants that change one component of the U-Net.

MFP-Unet (a feature pyramid over the decoder levels), the framing U-Net (Haar wavelet pooling with a high-pass
bypass) and the improved U-Net for seabed mineral images.
"""
