"""U-Net family: U-Net (2015), 3D U-Net (2016), UNet++ (2018)."""
