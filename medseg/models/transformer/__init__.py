"""Transformer segmenters (family ``transformer``): TransUNet, SETR and HRFormer, 2D and 3D.

MONAI's UNETR and Swin-UNETR of the same family live in :mod:`medseg.models.monai_wrappers`. Attention layers use
:func:`torch.nn.functional.scaled_dot_product_attention` (see :mod:`medseg.models.transformer._modules`).
"""
