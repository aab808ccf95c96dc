"""Synthetic multi-site prostate MRI: a stand-in for the real release that anyone can generate.

:func:`make_demo_data` writes OUT/raw/prostate/ in exactly the release layout (site folders BIDMC, HK,
I2CVB, ISBI, ISBI_1.5, UCL; CaseNN.nii.gz + CaseNN_segmentation.nii.gz, _Segmentation for ISBI_1.5),
then runs the real prostate preparer into OUT/prostate/ with ``synthetic: true`` in every datalist.

Each volume is a pelvis-like slab: an elliptic body with smooth tissue texture, a bright bladder and a
dark rectum, and a prostate gland, an ellipsoid deformed by random low-order harmonics (two zones,
labels 1 and 2, on the ISBI sites as in the real release; label 1 elsewhere). Sites differ as real
centres do: number of volumes, in-plane size, number of slices, voxel spacing, stored dtype and
intensity scale, gland contrast, noise level and bias-field strength. Everything is drawn from
``numpy.random.default_rng([seed, site, case])``, so a seed fixes every byte (gzip mtime is zeroed).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

from fedfms.core.io import staged_directory
from fedfms.data.writer import DEFAULT_SEED, SiteSummary, prepare_dataset


@dataclass(frozen=True)
class DemoSite:
    """Acquisition "protocol" of one synthetic site."""

    folder: str  # raw release folder name
    seg_suffix: str  # "segmentation" or "Segmentation", as in the real release
    num_volumes: int
    size: int  # in-plane voxels (square)
    slices: tuple[int, int]  # min, max number of slices
    spacing: tuple[float, float, float]  # mm
    dtype: str  # stored NIfTI dtype
    scale: float  # intensity of the brightest tissue
    gland_contrast: float  # gland intensity relative to surrounding tissue
    noise: float  # Rician noise std, relative to scale
    bias: float  # bias-field amplitude (multiplicative, relative)
    zones: bool  # label the gland as two zones (1 central, 2 peripheral)


SITES: tuple[DemoSite, ...] = (
    DemoSite("BIDMC", "segmentation", 6, 96, (16, 22), (1.60, 1.60, 3.0), "int16", 1800.0, 0.75, 0.05, 0.35, False),
    DemoSite("HK", "segmentation", 4, 80, (12, 16), (1.90, 1.90, 3.6), "float32", 255.0, 1.35, 0.03, 0.15, False),
    DemoSite("I2CVB", "segmentation", 7, 96, (18, 24), (1.50, 1.50, 3.2), "int16", 900.0, 1.15, 0.06, 0.25, False),
    DemoSite("ISBI", "segmentation", 8, 64, (14, 18), (2.20, 2.20, 4.0), "float32", 3500.0, 0.85, 0.02, 0.10, True),
    DemoSite("ISBI_1.5", "Segmentation", 5, 72, (12, 16), (2.00, 2.00, 4.0), "int16", 600.0, 1.25, 0.08, 0.30, True),
    DemoSite("UCL", "segmentation", 3, 88, (16, 20), (1.70, 1.70, 3.0), "float32", 1300.0, 0.70, 0.04, 0.20, False),
)
SOURCE_RELEASE = "synthetic stand-in for the multi-site prostate MRI release (fedfms make_demo_data, seed {seed})"


def _bias_field(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Smooth random field in [-1, 1]: a random quadratic polynomial of the normalized coordinates."""
    u, v, w = (c / max(np.abs(c).max(), 1e-6) for c in (x, y, z))
    a = rng.uniform(-1, 1, 7)
    field = a[0] * u + a[1] * v + a[2] * w + a[3] * u * v + a[4] * u**2 + a[5] * v**2 + a[6] * u * w
    return field / max(np.abs(field).max(), 1e-6)


def synth_volume(site: DemoSite, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case of ``site`` -> (image (X, Y, Z) in site.dtype, label uint8 (X, Y, Z), 4x4 affine)."""
    nz = int(rng.integers(site.slices[0], site.slices[1] + 1))
    shape = (site.size, site.size, nz)
    sx, sy, sz = site.spacing
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, site.spacing)], indexing="ij")

    # body and texture
    half_w, half_h = site.size * sx / 2, site.size * sy / 2
    body = (x / (0.9 * half_w)) ** 2 + (y / (0.75 * half_h)) ** 2 < 1
    texture = gaussian_filter(rng.standard_normal(shape), sigma=(2, 2, 0.7))
    texture /= max(np.abs(texture).max(), 1e-6)
    image = np.where(body, 0.45 + 0.1 * texture, 0.02)

    # gland: deformed ellipsoid near the centre, spanning a central part of the slab
    cx, cy, cz = rng.uniform(-6, 6), rng.uniform(-8, 4), rng.uniform(-0.15, 0.15) * nz * sz
    rx, ry, rz = rng.uniform(18, 28), rng.uniform(14, 21), rng.uniform(0.22, 0.32) * nz * sz
    theta = np.arctan2(y - cy, x - cx)
    wobble = 1 + rng.uniform(0.03, 0.12) * np.cos(2 * theta + rng.uniform(0, np.pi)) \
        + rng.uniform(0.0, 0.08) * np.cos(3 * theta + rng.uniform(0, np.pi))
    # the wobble scales the in-plane radius only, so every cross-section is one connected blob
    d = np.sqrt((((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) / wobble**2 + ((z - cz) / rz) ** 2)
    gland = d < 1
    central = d < 0.6

    # bladder (bright, anterior) and rectum (dark, posterior), in the slices around the gland
    bladder = ((x - cx) / (rx * 1.3)) ** 2 + ((y - cy - 1.9 * ry) / (0.9 * ry)) ** 2 \
        + ((z - cz - rz * 0.7) / (rz * 0.9)) ** 2 < 1
    rectum = ((x - cx) / (0.55 * rx)) ** 2 + ((y - cy + 1.5 * ry) / (0.45 * ry)) ** 2 < 1
    image = np.where(bladder & ~gland, 0.95, image)
    image = np.where(rectum & ~gland, 0.12, image)
    gland_level = 0.45 * site.gland_contrast
    image = np.where(gland, gland_level * np.where(central, 0.85, 1.1) * (1 + 0.1 * texture), image)

    # acquisition: bias field, Rician noise, site scale and dtype
    image = image * (1 + site.bias * _bias_field(rng, x, y, z))
    noise = site.noise
    image = np.sqrt((image + rng.normal(0, noise, shape)) ** 2 + rng.normal(0, noise, shape) ** 2) * site.scale
    image = np.round(image).astype(site.dtype) if np.dtype(site.dtype).kind == "i" else image.astype(site.dtype)

    label = np.where(gland, np.where(central | (not site.zones), 1, 2), 0).astype(np.uint8)
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(shape, site.spacing)]
    return image, label, affine


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Save .nii.gz with a zero gzip mtime so the bytes depend only on the content."""
    path.write_bytes(gzip.compress(nib.Nifti1Image(array, affine).to_bytes(), mtime=0))


def write_raw_release(root: Path, seed: int = DEFAULT_SEED) -> None:
    """Write the synthetic release into ``root`` (created/replaced atomically) in the real layout."""
    with staged_directory(root) as tmp:
        (tmp / "SYNTHETIC.txt").write_text(f"Synthetic data generated by fedfms make_demo_data (seed {seed}); not patient data.\n")
        for site_index, site in enumerate(SITES):
            (tmp / site.folder).mkdir()
            for case in range(site.num_volumes):
                image, label, affine = synth_volume(site, np.random.default_rng([seed, site_index, case]))
                _save_nifti(image, affine, tmp / site.folder / f"Case{case:02d}.nii.gz")
                _save_nifti(label, affine, tmp / site.folder / f"Case{case:02d}_{site.seg_suffix}.nii.gz")


def make_demo_data(out: str | Path, seed: int = DEFAULT_SEED) -> list[SiteSummary]:
    """Generate OUT/raw/prostate (release layout) and prepare it into OUT/prostate/SITE (synthetic: true)."""
    out = Path(out)
    raw = out / "raw" / "prostate"
    write_raw_release(raw, seed)
    return prepare_dataset("prostate", raw, out, seed=seed, synthetic=True,
                           source_release=SOURCE_RELEASE.format(seed=seed))
