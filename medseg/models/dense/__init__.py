"""Dense (DenseNet-style) family: FC-DenseNet, Dense V-Net, HyperDenseNet, H-DenseUNet.

Also the DenseNet feature extractor they and later backbones share (:mod:`medseg.models.dense.densenet`).
"""
