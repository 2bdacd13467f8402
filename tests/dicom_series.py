"""Write DICOM series from a real volume, for tests: known geometry, then re-read and compared.

Each slice becomes one CT or MR Image Storage file with the geometry of the volume's affine; options reproduce
what real archives do (shuffled file names, reversed InstanceNumbers, rescale slope/intercept, compressed transfer
syntaxes) and what breaks geometry (a missing slice, gantry tilt, mixed orientations, two series in one folder).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

SYNTAXES = {
    "rle": "RLELossless",
    "jpeg-lossless": "JPEGLosslessProcess14_1",
    "jpeg-ls": "JPEGLSLossless",
    "jpeg2000": "JPEG2000Lossless",
}


def compress(path: Path, syntax: str) -> None:
    """Re-encode one file in place with GDCM into a compressed transfer syntax (a key of SYNTAXES)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read(), path
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, SYNTAXES[syntax])))
    change.SetInput(reader.GetImage())
    assert change.Change(), syntax
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), path


def write_series(
    volume: np.ndarray,
    affine_ras: np.ndarray,
    folder: Path,
    *,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = 0.0,
    series_uid: str | None = None,
    description: str = "test series",
    shuffle: bool = True,
    reverse_instance_numbers: bool = True,
    syntax: str | None = None,
    skip: tuple[int, ...] = (),
    tilt_mm_per_slice: float = 0.0,
    seed: int = 0,
) -> list[Path]:
    """Write ``volume`` (X, Y, Z) of world values (e.g. HU) as a DICOM series in ``folder``; return the files.

    Stored pixel values are ``(value - intercept) / slope`` as int16.
    """
    folder.mkdir(parents=True, exist_ok=True)
    affine = LPS @ np.asarray(affine_ras, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    row_dir, col_dir = affine[:3, 0] / spacing[0], affine[:3, 1] / spacing[1]
    study, series, frame_of_ref = generate_uid(), series_uid or generate_uid(), generate_uid()
    stored = np.round((np.asarray(volume, dtype=np.float64) - intercept) / slope).astype(np.int16)
    n = volume.shape[2]
    names = [f"img{i:04d}.dcm" for i in range(n)]
    if shuffle:
        random.Random(seed).shuffle(names)
    files = []
    for k in range(n):
        if k in skip:
            continue
        position = affine[:3, 3] + k * affine[:3, 2] + k * tilt_mm_per_slice * col_dir
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName = "TEST001", "Test^Patient"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_ref
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber = modality, description, 1
        ds.InstanceNumber = n - k if reverse_instance_numbers else k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        pixels = np.ascontiguousarray(stored[:, :, k].T)  # rows follow the second axis, columns the first
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = pixels.tobytes()
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        if syntax is not None:
            compress(path, syntax)
        files.append(path)
    return files


def read_with_simpleitk(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK's own series reader: the (X, Y, Z) array and the RAS affine, for cross-checks."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return array, LPS @ affine


def read_pydicom_header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)
