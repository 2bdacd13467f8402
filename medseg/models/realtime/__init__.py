"""Real-time and lightweight segmentation networks (family ``realtime``).

Encoder-decoder and two-branch designs made for fast inference on street scenes: ENet, ERFNet, LEDNet, CGNet,
ESPNet, ESPNetv2, ContextNet, Fast-SCNN, ICNet, BiSeNet, BiSeNetV2, ShuffleSeg, LiteSeg and SwiftNet. Each model file
registers one architecture; :mod:`medseg.models` imports them (one line per architecture). Where a design is not
tied to 2D RGB images it is built from MONAI's layer factories and runs in 3D as well (fast slice-wise or volumetric
medical segmentation); each module docstring says which dims it supports.
"""
