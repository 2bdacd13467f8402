"""Loading and saving images with their geometry.

One loading function, :func:`load_image`, reads NIfTI (``.nii``, ``.nii.gz``, via nibabel), NRRD (``.nrrd``,
``.nhdr``) and MetaImage (``.mha``, ``.mhd``) via SimpleITK, and DICOM series folders (see :mod:`medseg.io.dicom`).
One saving function, :func:`save_image`, writes NIfTI, NRRD and MetaImage.

Images are MONAI ``MetaTensor``s of shape ``(C, *spatial)`` (channel first; ``C = 1`` for scalar images, the 4th
NIfTI axis or the vector components otherwise). Their ``meta`` holds:

- ``affine``: 4×4 float64 voxel-to-world matrix in RAS+ millimetres (also ``original_affine``);
- ``spacing``, ``origin``, ``direction``: the same geometry split apart (RAS; direction columns are axes);
- ``spatial_shape``, ``filename_or_obj``, ``format`` (``nifti``, ``nrrd``, ``mha``, ``mhd``, ``dicom``, ``dicom-seg``),
  ``space``;
- ``original_dtype``: the dtype on disk. Torch has no full ``uint16``/``uint32`` support, so those load widened
  losslessly to ``int32``/``int64`` and are narrowed back by :func:`save_image`;
- for DICOM, the series' identifiers (see :func:`medseg.io.dicom.read_dicom_series`).

Voxels are kept in the order they are stored (no reorientation); the affine says where each one is.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.errors import GeometryError, ImageContentError, ImageReadError, ImageWriteError
from medseg.io.geometry import (
    LPS_TO_RAS,
    affine_from_geometry,
    affine_problem,
    geometry_from_affine,
    is_orthonormal,
)
from medseg.io.meta import WIDEN, ImageData, apply_rescale, image_data, make_image
from medseg.io.naming import (
    NIFTI_SUFFIXES,
    PICTURE_SUFFIXES,
    PICTURE_WRITE_SUFFIXES,
    READ_SUFFIXES,
    WRITE_SUFFIXES,
    image_suffix,
)

if TYPE_CHECKING:
    import torch
    from monai.data import MetaTensor

__all__ = [
    "READ_SUFFIXES",
    "WRITE_SUFFIXES",
    "apply_rescale",
    "check_finite",
    "image_format",
    "image_suffix",
    "is_image_path",
    "load_image",
    "make_image",
    "read_image",
    "require_3d",
    "save_image",
]

def image_format(path: str | Path) -> str:
    """Name of the format of ``path``: ``nifti``, ``nrrd``, ``mha``, ``mhd``, ``picture`` or ``dicom`` (a folder)."""
    path = Path(path)
    if path.is_dir():
        return "dicom"
    suffix = image_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in (".nrrd", ".nhdr"):
        return "nrrd"
    if suffix in (".mha", ".mhd"):
        return suffix[1:]
    if suffix in PICTURE_SUFFIXES:
        return "picture"
    if suffix == "" and path.suffix.lower() in (".dcm", ".ima", ""):
        return "dicom"
    return ""


def is_image_path(path: str | Path) -> bool:
    """Whether ``path`` is a file medseg reads as an image (by its ending) or a folder (a DICOM series)."""
    path = Path(path)
    return path.is_dir() or image_suffix(path) != ""


def load_image(path: str | Path, *, series_uid: str | None = None) -> MetaTensor:
    """Load an image file or a DICOM series folder as a channel-first ``MetaTensor`` with RAS geometry.

    :func:`read_image` with its result wrapped by :func:`medseg.io.meta.make_image`.

    Args:
        path: A ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` file, a DICOM file, a folder holding
            one DICOM series (searched recursively), or a DICOM Segmentation file (read as a label map of segment
            numbers, see :mod:`medseg.io.dicom_seg`).
        series_uid: For a DICOM folder with several series, the SeriesInstanceUID to read.

    Returns:
        ``MetaTensor`` of shape ``(C, *spatial)``; see the module docstring for its ``meta``.

    Raises:
        ImageReadError: The path is missing, not an image, truncated or corrupt.
        DicomSeriesError: A DICOM folder holds no series, or several and none was chosen.
        GeometryError: A DICOM series' geometry cannot be trusted (missing slices, tilt, mixed orientations…).
    """
    return make_image(read_image(path, series_uid=series_uid))


def read_image(path: str | Path, *, series_uid: str | None = None) -> ImageData:
    """Read an image file or a DICOM series folder as :class:`~medseg.io.meta.ImageData` (numpy, no torch).

    The same reading and checks as :func:`load_image` — geometry is checked before anything else sees the image
    (a singular affine, zero, negative or NaN voxel sizes are refused) — for commands that only move files around.

    Raises:
        ImageReadError, DicomSeriesError, GeometryError: As :func:`load_image`.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError("no such file or folder", path)
    try:
        image = _read_any(path, series_uid)
    except MemoryError:
        raise ImageReadError("not enough memory to load this image (is its header's size right?)", path) from None
    except RecursionError:
        raise ImageReadError("the file's structure nests too deeply to read", path) from None
    except OSError as exc:
        from medseg.utils.files import os_problem

        raise ImageReadError(f"cannot read: {os_problem(exc)}", path) from None
    problem = affine_problem(image.meta["original_affine"], len(image.shape) - 1)
    if problem is not None:
        raise GeometryError(problem, path)
    return image


def _read_any(path: Path, series_uid: str | None) -> ImageData:
    fmt = image_format(path)
    if fmt == "dicom":
        from medseg.io.dicom import read_series_data
        from medseg.io.dicom_seg import dicom_seg_data, is_dicom_seg

        if is_dicom_seg(path):
            return dicom_seg_data(path)
        return read_series_data(path, series_uid=series_uid)
    if fmt == "nifti":
        return _read_nifti(path)
    if fmt in ("nrrd", "mha", "mhd"):
        return _read_itk(path, fmt)
    if fmt == "picture":
        return _read_picture(path)
    raise ImageReadError(
        f"unsupported file type '{path.suffix}' (supported: {', '.join(READ_SUFFIXES)}, or a DICOM series folder)",
        path,
    )


def _describe_read_failure(exc: BaseException, path: Path) -> str:
    if isinstance(exc, EOFError):
        return "file is truncated (the compressed stream ends early)"
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.replace(f'"{path}"', "the file").replace(f"'{path}'", "the file").replace(str(path), "the file")
    if "not a gzip file" in text.lower():
        return "not a gzip-compressed file although it ends in .gz"
    if "cannot work out file type" in text.lower():
        return "no NIfTI-1 or NIfTI-2 header found"
    return text[:300]


def _read_nifti(path: Path) -> ImageData:
    import nibabel as nib

    try:
        with _quiet_nibabel():  # header fixes nibabel would print; checked below instead
            img = nib.load(str(path), mmap=False)
    except Exception as exc:
        raise ImageReadError(f"not a readable NIfTI file: {_describe_read_failure(exc, path)}", path) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageReadError(f"not a NIfTI image ({type(img).__name__})", path)
    _check_nifti_spacing(img, path)
    proxy = img.dataobj
    try:
        raw = np.asarray(proxy.get_unscaled())  # type: ignore[union-attr]
    except MemoryError:
        shape = tuple(int(s) for s in img.shape)
        size = float(np.prod(shape, dtype=np.float64)) * img.get_data_dtype().itemsize
        raise ImageReadError(f"the header declares {' × '.join(map(str, shape))} voxels ({size / 2**30:,.1f} GiB), "
                             "more than this machine's memory (a corrupt header?)", path) from None
    except Exception as exc:
        raise ImageReadError(f"cannot read the voxel data: {_describe_read_failure(exc, path)}", path) from exc
    slope = float(getattr(proxy, "slope", 1.0))
    inter = float(getattr(proxy, "inter", 0.0))
    if not np.isfinite(slope) or slope == 0:
        slope = 1.0
    if not np.isfinite(inter):
        inter = 0.0
    data = apply_rescale(raw, slope, inter)
    if data.ndim == 5 and data.shape[3] == 1:  # (x, y, z, 1, c): NIfTI's vector layout
        data = data[:, :, :, 0, :]
    if data.ndim <= 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.moveaxis(data, 3, 0)
    else:
        raise ImageReadError(f"{data.ndim}D NIfTI data of shape {data.shape} is not supported", path)
    meta = {"filename_or_obj": str(path), "format": "nifti"}
    return image_data(data, img.affine, meta)


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's header-fix messages (they would break one-line errors); medseg checks the header itself."""
    import nibabel as nib

    logger = nib.imageglobals.logger
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def _check_nifti_spacing(img: Any, path: Path) -> None:
    """Refuse zero, negative or NaN voxel sizes (pixdim) where the affine is built from them (no sform).

    The header is read again as stored: nibabel's loaded header has zero already turned into 1 mm and negative
    into its absolute value, silently.
    """
    import nibabel as nib

    if int(img.header["sform_code"]) > 0:
        return
    with nib.openers.ImageOpener(str(path)) as handle, _quiet_nibabel():
        header = type(img.header).from_fileobj(handle, check=False)
    spatial = max(1, min(3, int(header["dim"][0])))
    pixdim = np.asarray(header["pixdim"][1:1 + spatial], dtype=np.float64)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        kind = "NaN or infinite" if not np.all(np.isfinite(pixdim)) else "zero or negative"
        shown = ", ".join(f"{v:g}" for v in pixdim)
        raise GeometryError(f"voxel size (pixdim) is {kind}: ({shown}) and no sform gives the geometry instead", path)


def _itk_to_ras_affine(image: Any) -> np.ndarray:
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    affine = affine_from_geometry(image.GetSpacing(), image.GetOrigin(), direction)
    return LPS_TO_RAS @ affine


def _read_itk(path: Path, fmt: str) -> ImageData:
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        image = reader.Execute()
    except Exception as exc:
        raise ImageReadError(f"not a readable {fmt.upper()} file: {_itk_message(exc)}", path) from exc
    dim = image.GetDimension()
    if dim not in (2, 3):
        raise ImageReadError(f"{dim}D images are not supported (2D or 3D, with optional vector components)", path)
    array = sitk.GetArrayFromImage(image)  # (z, y, x[, c])
    ncomp = image.GetNumberOfComponentsPerPixel()
    array = np.moveaxis(array, -1, 0) if ncomp > 1 else array[None]  # (c, z, y, x)
    array = np.moveaxis(array, range(1, dim + 1), range(dim, 0, -1))  # (c, x, y, z), a view
    meta = {"filename_or_obj": str(path), "format": fmt}
    return image_data(array, _itk_to_ras_affine(image), meta)


def _read_picture(path: Path) -> ImageData:
    """A 2D picture as one slice: ``(C, X, Y, 1)``, colour components as channels, z spacing 1 mm.

    Pixel spacing and origin are the file's (1 and 0 unless it records them); as for NRRD, the picture's LPS-style
    frame is converted to RAS, so writing the slice back to a picture reproduces the file.
    """
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except Exception as exc:
        raise ImageReadError(f"not a readable picture: {_itk_message(exc)}", path) from exc
    if image.GetDimension() != 2:
        return _read_itk(path, "picture")  # a multi-page TIFF: a 3D stack
    array = sitk.GetArrayFromImage(image)  # (y, x[, c])
    ncomp = image.GetNumberOfComponentsPerPixel()
    array = np.moveaxis(array, -1, 0) if ncomp > 1 else array[None]  # (c, y, x)
    if ncomp == 4 and array.dtype.kind == "u" and np.all(array[3] == np.iinfo(array.dtype).max):
        array = array[:3]  # a fully opaque alpha channel carries nothing
    array = np.swapaxes(array, 1, 2)[..., None]  # (c, x, y, 1)
    direction = np.eye(3)
    direction[:2, :2] = np.asarray(image.GetDirection(), dtype=np.float64).reshape(2, 2)
    affine = LPS_TO_RAS @ affine_from_geometry((*image.GetSpacing(), 1.0), (*image.GetOrigin(), 0.0), direction)
    meta = {"filename_or_obj": str(path), "format": "picture"}
    return image_data(array, affine, meta)


def _itk_message(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if "Description:" in line or "ERROR" in line.upper()]
    text = (useful or lines or [type(exc).__name__])[-1]
    text = re.sub(r"ITK ERROR:\s*\w*\(0x[0-9a-fA-F]+\):\s*", "", text.replace("Description:", ""))
    return text.strip()[:300]


def check_finite(image: torch.Tensor, path: str | Path | None = None) -> None:
    """Raise :class:`ImageContentError` when ``image`` holds NaN or infinite values (their count is reported)."""
    import torch

    if image.is_floating_point():
        bad = int((~torch.isfinite(image)).sum())
        if bad:
            nan = int(torch.isnan(image).sum())
            raise ImageContentError(f"{bad} non-finite voxels ({nan} NaN, {bad - nan} Inf)", path)


def require_3d(image: torch.Tensor, path: str | Path | None = None, *, channels: int | None = 1) -> None:
    """Raise :class:`ImageContentError` unless ``image`` is ``(C, X, Y, Z)`` with ``channels`` channels (None: any)."""
    if image.ndim != 4:
        found = f"{image.ndim - 1} spatial dimensions {tuple(image.shape[1:])}"
        raise ImageContentError(f"expected a 3D volume, got {found}", path)
    if channels is not None and image.shape[0] != channels:
        raise ImageContentError(
            f"expected {channels} channel(s), got {image.shape[0]} (a 4D image where a 3D volume is needed?)", path
        )


def _narrowed(array: np.ndarray, original_dtype: str | None) -> np.ndarray:
    """Choose the on-disk dtype: undo load-time widening, and store torch's int64/bool as the smallest fitting type."""
    if original_dtype is not None:
        original = np.dtype(original_dtype)
        if original != np.bool_ and original in WIDEN and np.dtype(WIDEN[original]) == array.dtype:
            return array.astype(original)
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.int64:
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for candidate in (np.uint8, np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return array.astype(candidate)
    return array


def save_image(
    image: torch.Tensor | ImageData | np.ndarray, path: str | Path, *, affine: np.ndarray | None = None
) -> Path:
    """Write a channel-first image to NIfTI, NRRD or MetaImage, chosen by the ending of ``path``.

    The file is written atomically (to a temporary name, then renamed), so a crash never leaves a half-written image.

    Args:
        image: ``(C, *spatial)`` ``MetaTensor`` or :class:`~medseg.io.meta.ImageData` (its ``affine`` is used) or
            array. ``C > 1`` is written as the 4th
            NIfTI axis or as vector components.
        path: Output file; its ending picks the format: ``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``,
            or a picture (``.png``, ``.tif``, ``.tiff``) for one slice ``(C, X, Y, 1)`` of integers (PNG: 8 or 16
            bit, 1, 3 or 4 channels).
        affine: RAS+ affine, required for plain arrays; overrides the ``MetaTensor``'s own.

    Returns:
        The path written.

    Raises:
        ImageWriteError: Unknown ending, an affine the format cannot store (shear in NRRD/MetaImage), bad shape.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise ImageWriteError(f"unknown output format (use one of {', '.join(WRITE_SUFFIXES)})", path)
    meta = getattr(image, "meta", {}) or {}
    if affine is None:
        if "affine" not in meta:
            raise ImageWriteError("no affine: pass affine= for a plain array", path)
        affine = np.asarray(meta["affine"], dtype=np.float64)
    affine = np.asarray(affine, dtype=np.float64)
    if isinstance(image, ImageData):
        array = image.array
    else:
        array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim not in (3, 4):
        problem = f"expected a channel-first array (C, *spatial) with 2 or 3 spatial axes, got {array.shape}"
        raise ImageWriteError(problem, path)
    array = _narrowed(array, meta.get("original_dtype"))
    from medseg.utils.files import atomic_write_via

    def produce(target: Path) -> None:
        if suffix in NIFTI_SUFFIXES:
            _write_nifti(array, affine, target)
        elif suffix in PICTURE_WRITE_SUFFIXES:
            _write_picture(array, affine, target, path)
        else:
            _write_itk(array, affine, target, path)

    return atomic_write_via(path, produce)


def _write_nifti(array: np.ndarray, affine: np.ndarray, target: Path) -> None:
    import nibabel as nib

    data = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.set_data_dtype(data.dtype)
    nib.save(img, str(target))


def _write_picture(array: np.ndarray, affine: np.ndarray, target: Path, path: Path) -> None:
    """One slice ``(C, X, Y, 1)`` as a 2D picture (see :func:`_read_picture` for the geometry)."""
    if array.ndim != 4 or array.shape[3] != 1:
        raise ImageWriteError(f"a picture holds one slice (C, X, Y, 1), not an image of shape {array.shape}", path)
    if array.dtype.kind == "f" or array.dtype.kind == "b":
        rounded = np.rint(array)
        if array.dtype.kind == "f" and not np.array_equal(rounded, array):
            raise ImageWriteError("a picture stores integers; this image holds fractional values", path)
        array = rounded.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() > 65535):
        raise ImageWriteError(f"a picture stores 0…65535, not {array.min()}…{array.max()}", path)
    wide = array.size > 0 and array.max() > 255
    if wide and array.shape[0] != 1:
        raise ImageWriteError("values above 255 are written to one-channel (16-bit) pictures only", path)
    image = _itk_image(array[..., 0].astype(np.uint16 if wide else np.uint8))
    lps = LPS_TO_RAS @ affine  # in-plane spacing and origin only: pictures store no orientation
    image.SetSpacing(tuple(float(s) for s in np.linalg.norm(lps[:3, :2], axis=0)))
    image.SetOrigin(tuple(float(o) for o in lps[:2, 3]))
    _itk_write(image, target, path)


def _itk_image(array: np.ndarray) -> Any:
    """A SimpleITK image of a channel-first ``(C, X[, Y[, Z]])`` array: scalar for one channel, else vector."""
    import SimpleITK as sitk

    dim = array.ndim - 1
    zyx = np.moveaxis(array, range(1, dim + 1), range(dim, 0, -1))  # (c, z, y, x)
    if array.shape[0] == 1:
        return sitk.GetImageFromArray(np.ascontiguousarray(zyx[0]))
    return sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(zyx, 0, -1)), isVector=True)


def _write_itk(array: np.ndarray, affine: np.ndarray, target: Path, path: Path) -> None:

    geometry = geometry_from_affine(LPS_TO_RAS @ affine, array.shape[1:])
    direction = np.asarray(geometry.direction)
    if not is_orthonormal(direction):
        raise ImageWriteError("the affine has shear, which NRRD/MetaImage cannot store (write NIfTI instead)", path)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    image = _itk_image(array)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(tuple(direction.ravel()))
    _itk_write(image, target, path, compress=True)


def _itk_write(image: Any, target: Path, path: Path, compress: bool = False) -> None:
    """``sitk.WriteImage`` into the staging file ``target``; errors name ``path``, never the staging name.

    ITK reports a full disk only as a failed write; when the folder has less free space than the image needs, the
    error says so (as an ``OSError`` of the disk-full kind, so that batches stop on it).
    """
    import errno
    import shutil

    import SimpleITK as sitk

    try:
        sitk.WriteImage(image, str(target), useCompression=compress)
    except Exception as exc:
        needed = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * 8
        free = needed
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(target.parent).free
        if free < needed:
            raise OSError(errno.ENOSPC, "no space left on device") from exc
        text = _itk_message(exc).replace(str(target.parent), str(path.parent))
        raise ImageWriteError(f"cannot write: {text}", path) from exc
