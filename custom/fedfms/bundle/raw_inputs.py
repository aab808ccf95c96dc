"""Inputs of inference on new patients: what a path holds, and reading each input.

A path is one input or a folder of them, searched recursively (hidden entries skipped):

- a volume file: NIfTI ``.nii`` / ``.nii.gz``, MetaImage ``.mha`` / ``.mhd``, NRRD ``.nrrd`` / ``.nhdr``;
- a DICOM series: a folder directly holding DICOM files (one series per folder);
- a 2D image: ``.png``, ``.jpg`` / ``.jpeg``, ``.bmp``, ``.tif`` / ``.tiff`` (read as 8-bit RGB).

Other files (a MetaImage's ``.raw`` data, notes, ...) are not inputs. Each input gets an output name: its
path relative to the searched folder without the format suffix (``sub/Case00``; a DICOM folder its own
relative path), with the suffix kept when two inputs would otherwise share a name.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedfms.data.preparation import DataError, load_rgb
from fedfms.data.volume_io import VOLUME_SUFFIXES, Volume, dicom_files, is_dicom_file, read_volume, volume_stem, volume_suffix

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class InputCase:
    """One input: ``path`` (file or DICOM folder), ``name`` (output name, may contain "/"), ``kind``
    ("volume", "dicom" or "image")."""

    path: Path
    name: str
    kind: str


def _kind(path: Path) -> str | None:
    if path.is_dir():
        return "dicom" if dicom_files(path) else None
    if volume_suffix(path):
        return "volume"
    return "image" if path.suffix.lower() in IMAGE_SUFFIXES else None


def _unique_names(cases: list[InputCase]) -> list[InputCase]:
    """Names that would clash (Case00.mha and Case00.nrrd) use the whole file name: Case00_mha, Case00_nrrd."""
    counts = Counter(c.name for c in cases)

    def whole(c: InputCase) -> str:
        folder = c.name[: len(c.name) - len(Path(c.name).name)]
        return folder + c.path.name.replace(".", "_")

    return [c if counts[c.name] == 1 else InputCase(c.path, whole(c), c.kind) for c in cases]


def find_inputs(path: str | Path) -> list[InputCase]:
    """The inputs at ``path`` (see the module docstring), in sorted path order.

    FileNotFoundError if ``path`` does not exist; ValueError for a single file of another format (a single
    DICOM file: pass its series folder) and for a folder without any input.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} not found")
    if path.is_file():
        kind = _kind(path)
        if kind is None:
            hint = "a single DICOM file: pass the folder of its series" if is_dicom_file(path) else "unsupported format"
            raise ValueError(f"input {path}: {hint}; expected {', '.join(VOLUME_SUFFIXES + IMAGE_SUFFIXES)} or a DICOM series folder")
        return [InputCase(path, volume_stem(path) if kind == "volume" else path.stem, kind)]

    cases: list[InputCase] = []

    def walk(folder: Path, prefix: str) -> None:
        if dicom_files(folder):
            cases.append(InputCase(folder, prefix.rstrip("/") or folder.name, "dicom"))
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and volume_suffix(entry):  # a folder named like a volume file: reported on reading
                cases.append(InputCase(entry, prefix + volume_stem(entry), "volume"))
            elif entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif (kind := _kind(entry)) is not None:
                cases.append(InputCase(entry, prefix + (volume_stem(entry) if kind == "volume" else entry.stem), kind))

    walk(path, "")
    if not cases:
        raise ValueError(f"input folder {path} holds no volume, DICOM series or 2D image "
                         f"({', '.join(VOLUME_SUFFIXES + IMAGE_SUFFIXES)})")
    return _unique_names(cases)


def read_volume_input(case: InputCase) -> Volume:
    """The input's volume (X, Y, Z) with its geometry; trailing singleton axes dropped. DataError naming
    the file if it is unreadable, implausible (see fedfms.data.volume_io) or not 3D."""
    volume = read_volume(case.path)
    array = volume.array
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise DataError(case.path, f"expected a 3D volume of real intensities, got shape {array.shape} {array.dtype}")
    if not np.isfinite(array).all():
        raise DataError(case.path, f"{int((~np.isfinite(array)).sum())} NaN or infinite intensities")
    return Volume(array, volume.affine, volume.source, volume.files)


def read_image_input(case: InputCase) -> np.ndarray:
    """The input's 2D image as (3, H, W) uint8 (grey repeated); DataError naming the file if unreadable."""
    return np.ascontiguousarray(np.moveaxis(load_rgb(case.path), -1, 0))
