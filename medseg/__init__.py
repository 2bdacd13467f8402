"""medseg: segmentation of CT and MRI volumes, from DICOM or NIfTI in to masks out."""

__version__ = "0.1.0"
