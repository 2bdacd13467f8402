"""Probabilistic family: segmentation networks that model ambiguity with latent variables.

Probabilistic U-Net (Kohl et al., NeurIPS 2018) and Hierarchical Probabilistic U-Net (Kohl et al., 2019). They train
with their own objectives (``training_loss``: the ELBO, or GECO for the hierarchical model) and with the label as an
input of their posterior networks; :mod:`medseg.models.sampling` draws their samples.
"""
