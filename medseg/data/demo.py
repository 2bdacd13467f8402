"""A real-MRI tissue-segmentation dataset built from the MNI152 template that nilearn ships.

The demo needs a dataset that exists on every machine without a download. nilearn's package data holds the ICBM152
2009 T1 template (1 mm, skull-stripped) with its grey- and white-matter probability maps (Fonov et al., NeuroImage
2011). From them :func:`make_tissue_dataset` makes independent "subjects": each is the template under its own
random smooth deformation (an affine part plus a smooth displacement field), with a multiplicative bias field,
Gaussian noise and a random contrast (gamma) and intensity scale — the nuisances that separate one scanner session
from another. The tissue probability maps are warped with the same deformation, so the labels (0 background,
1 grey matter, 2 white matter: the more probable tissue where its probability exceeds 0.5) follow each subject's
anatomy exactly.

Training and test subjects come from disjoint random streams, so a model is judged on deformations it has never
seen. Everything is seeded: the same arguments give the same files.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError
from medseg.utils.files import atomic_json

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
LABELS = {"background": 0, "grey_matter": 1, "white_matter": 2}


@dataclass(frozen=True)
class SubjectVariation:
    """How much subjects differ from the template (defaults: plausible adult scans of one protocol).

    Attributes:
        rotation_deg: Largest rotation about each axis.
        scale: Largest relative scaling per axis (0.06: 0.94–1.06).
        translation_mm: Largest translation per axis.
        warp_mm: Standard deviation of the smooth displacement field.
        warp_control_mm: Spacing of the displacement field's control points (its smoothness).
        bias: Standard deviation of the log bias field (0.15: about ±15 % slow intensity change).
        noise: Noise standard deviation relative to the white-matter intensity.
        gamma: Largest log-gamma of the contrast change (0.25: gamma 0.78–1.28).
    """

    rotation_deg: float = 6.0
    scale: float = 0.06
    translation_mm: float = 4.0
    warp_mm: float = 2.0
    warp_control_mm: float = 24.0
    bias: float = 0.15
    noise: float = 0.03
    gamma: float = 0.25


def template_paths() -> dict[str, Path]:
    """Locate the MNI152 template files inside the installed nilearn package (without importing nilearn)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise MedsegError("the demo dataset needs nilearn's MNI152 template: pip install 'medseg[demo]'")
    folder = Path(spec.origin).parent / "datasets" / "data"
    paths = {key: folder / name for key, name in TEMPLATE_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise MedsegError(f"nilearn is installed but lacks its MNI152 template files: {', '.join(missing)}")
    return paths


def _load_template(spacing_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """T1, GM and WM maps (float32, 0–1 for the maps) cropped to the brain and resampled to ``spacing_mm``."""
    import nibabel as nib
    from scipy.ndimage import zoom

    paths = template_paths()
    images = {key: nib.load(str(path)) for key, path in paths.items()}
    t1 = np.asarray(images["t1"].dataobj, dtype=np.float32)
    gm = np.asarray(images["gm"].dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(images["wm"].dataobj, dtype=np.float32) / 255.0
    brain = t1 > 0
    hits = [np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    margin = 6
    box = tuple(
        slice(max(int(h[0]) - margin, 0), min(int(h[-1]) + 1 + margin, n)) for h, n in zip(hits, t1.shape, strict=True)
    )
    affine = images["t1"].affine.copy()
    start = np.array([b.start for b in box], dtype=np.float64)
    affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    source_spacing = np.linalg.norm(affine[:3, :3], axis=0)
    factor = source_spacing / spacing_mm
    arrays = [zoom(a[box], factor, order=1, grid_mode=True, mode="grid-constant") for a in (t1, gm, wm)]
    # grid_mode keeps the outer voxel corners: output voxel i is centred on input index (i + 0.5) / f - 0.5
    affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ (0.5 / factor - 0.5)
    affine[:3, :3] = affine[:3, :3] / factor
    return arrays[0], arrays[1], arrays[2], affine


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], control: int, sigma: float) -> np.ndarray:
    """A smooth random field: Gaussian noise on a coarse control grid, interpolated cubically to ``shape``."""
    from scipy.ndimage import zoom

    coarse = [max(2, int(np.ceil(n / control)) + 2) for n in shape]
    noise = rng.normal(0.0, sigma, size=coarse).astype(np.float32)
    field = zoom(noise, [n / c for n, c in zip(shape, coarse, strict=True)], order=3, mode="nearest", grid_mode=True)
    return field[tuple(slice(0, n) for n in shape)]


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_subject(
    t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, spacing_mm: float, rng: np.random.Generator,
    variation: SubjectVariation = SubjectVariation(),
) -> tuple[np.ndarray, np.ndarray]:
    """One subject: the template deformed, biased, re-contrasted and noised; returns (image float32, labels uint8).

    Args:
        t1: Template T1 (float32).
        gm: Grey-matter probability (0–1) on the same grid.
        wm: White-matter probability (0–1).
        spacing_mm: Isotropic voxel size of the grid.
        rng: The subject's random generator.
        variation: How far subjects differ from the template.
    """
    from scipy.ndimage import map_coordinates

    shape = t1.shape
    centre = (np.array(shape) - 1) / 2.0
    angles = np.deg2rad(rng.uniform(-variation.rotation_deg, variation.rotation_deg, 3))
    scales = 1.0 + rng.uniform(-variation.scale, variation.scale, 3)
    matrix = _rotation(angles) @ np.diag(1.0 / scales)
    shift = rng.uniform(-variation.translation_mm, variation.translation_mm, 3) / spacing_mm
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    offset = (centre - shift)[:, None, None, None]
    coords = np.einsum("ij,j...->i...", matrix, grid - centre[:, None, None, None]) + offset
    control = max(2, round(variation.warp_control_mm / spacing_mm))
    for axis in range(3):
        coords[axis] += _smooth_field(rng, shape, control, variation.warp_mm / spacing_mm)
    warped_t1 = map_coordinates(t1, coords, order=1, mode="constant", cval=0.0)
    warped_gm = map_coordinates(gm, coords, order=1, mode="constant", cval=0.0)
    warped_wm = map_coordinates(wm, coords, order=1, mode="constant", cval=0.0)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[(warped_gm > 0.5) & (warped_gm >= warped_wm)] = LABELS["grey_matter"]
    labels[(warped_wm > 0.5) & (warped_wm > warped_gm)] = LABELS["white_matter"]

    reference = float(np.percentile(t1[t1 > 0], 99)) or 1.0
    image = np.clip(warped_t1 / reference, 0.0, None)
    gamma = float(np.exp(rng.uniform(-variation.gamma, variation.gamma)))
    image = image**gamma
    bias = np.exp(_smooth_field(rng, shape, max(2, round(60.0 / spacing_mm)), variation.bias))
    image = image * bias
    image = image + rng.normal(0.0, variation.noise, size=shape).astype(np.float32) * (warped_t1 > 0)
    image = np.clip(image, 0.0, None) * float(rng.uniform(600.0, 1400.0))
    return image.astype(np.float32), labels


def make_tissue_dataset(
    out_dir: str | Path,
    *,
    n_train: int = 8,
    n_test: int = 4,
    spacing_mm: float = 2.0,
    seed: int = 0,
    variation: SubjectVariation = SubjectVariation(),
) -> Path:
    """Write subjects as NIfTI files and a manifest; return the manifest path.

    Layout: ``out_dir/imagesTr/sub-XXX.nii.gz``, ``labelsTr/sub-XXX.nii.gz`` (training), ``imagesTs``/``labelsTs``
    (test subjects), ``dataset.json`` (a medseg manifest of the training subjects) and ``test.json`` (a manifest of
    the labelled test subjects), plus ``SOURCE.json`` recording how they were made.

    Args:
        out_dir: Output folder (created).
        n_train: Training subjects.
        n_test: Test subjects, from a random stream disjoint from the training subjects'.
        spacing_mm: Isotropic voxel size.
        seed: Seed of every random choice.
        variation: How far subjects differ from the template.
    """
    import nibabel as nib

    from medseg.data.manifest import Case, Channel, Manifest, save_manifest

    out = Path(out_dir).resolve()
    t1, gm, wm, affine = _load_template(spacing_mm)
    streams = {"Tr": np.random.SeedSequence([seed, 0]), "Ts": np.random.SeedSequence([seed, 1])}
    cases: dict[str, list[Case]] = {"Tr": [], "Ts": []}
    for split, count in (("Tr", n_train), ("Ts", n_test)):
        (out / f"images{split}").mkdir(parents=True, exist_ok=True)
        (out / f"labels{split}").mkdir(parents=True, exist_ok=True)
        for index, child in enumerate(streams[split].spawn(count)):
            case_id = f"sub-{split.lower()}{index:03d}"
            image, labels = make_subject(t1, gm, wm, spacing_mm, np.random.default_rng(child), variation)
            image_path = out / f"images{split}" / f"{case_id}.nii.gz"
            label_path = out / f"labels{split}" / f"{case_id}.nii.gz"
            nib.save(nib.Nifti1Image(image, affine), str(image_path))
            label_img = nib.Nifti1Image(labels, affine)
            label_img.set_data_dtype(np.uint8)
            nib.save(label_img, str(label_path))
            cases[split].append(Case(id=case_id, images=(str(image_path),), label=str(label_path)))
    channels = (Channel(name="T1", modality="MR"),)
    description = (
        f"Grey/white-matter segmentation of T1 MRI: subjects made from the MNI152 2009 template by random smooth "
        f"deformation, bias field, noise and contrast change (seed {seed}, {spacing_mm:g} mm)."
    )
    train = Manifest(name="MNI152Tissue", channels=channels, labels=dict(LABELS), cases=tuple(cases["Tr"]),
                     root=out, description=description)
    test = Manifest(name="MNI152TissueTest", channels=channels, labels=dict(LABELS), cases=tuple(cases["Ts"]),
                    root=out, description=description)
    save_manifest(test, out / "test.json")
    path = save_manifest(train, out / "dataset.json")
    atomic_json(out / "SOURCE.json", {
        "template": {key: str(p.name) for key, p in template_paths().items()},
        "seed": seed, "spacing_mm": spacing_mm, "n_train": n_train, "n_test": n_test,
        "variation": variation.__dict__,
    })
    return path
