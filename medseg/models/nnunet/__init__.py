"""nnU-Net family: the dynamic plain-conv U-Net and the residual-encoder U-Net, built from a plan."""
