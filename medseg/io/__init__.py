"""Reading and writing images and DICOM with their geometry (RAS+ millimetres, channel-first ``MetaTensor``)."""

from medseg.io.dicom import SeriesInfo, read_dicom_series, scan_dicom
from medseg.io.geometry import Geometry, as_geometry, grid_differences, orientation_code
from medseg.io.image import (
    READ_SUFFIXES,
    WRITE_SUFFIXES,
    check_finite,
    image_format,
    is_image_path,
    load_image,
    make_image,
    read_image,
    require_3d,
    save_image,
)

__all__ = [
    "READ_SUFFIXES",
    "WRITE_SUFFIXES",
    "Geometry",
    "SeriesInfo",
    "as_geometry",
    "check_finite",
    "grid_differences",
    "image_format",
    "is_image_path",
    "load_image",
    "make_image",
    "orientation_code",
    "read_dicom_series",
    "read_image",
    "require_3d",
    "save_image",
    "scan_dicom",
]
