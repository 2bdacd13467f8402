"""U-Net variants with extra paths or pretrained encoders: LadderNet, U-NetPlus, CE-Net and W-Net."""
