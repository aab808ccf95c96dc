"""The contract between dataset readers and the site writer: cases, preparers and their registry.

A *preparer* knows one public release. For a site it yields :class:`Case` records; each case loads
lazily into a :class:`RawCase` (raw image + raw label) and carries the :class:`LabelMap` that turns the
release's label values into binary channels. Everything else (validation, normalization, slicing, the
9:1 split by volume, atomic writing, datalist.json) is done once for all datasets by
:mod:`fedfms.data.writer`.

How to add a dataset
--------------------
1. Create ``custom/fedfms/data/<name>.py`` with a subclass of :class:`Preparer` that sets ``name``,
   ``sites`` (default site names, in order), ``source_release``, ``label_channels`` (the channel names
   its label maps produce with the default options) and ``volumetric`` (3D volumes or 2D images), and implements
   ``iter_cases(src, site, **options)``. Yield one :class:`Case` per volume (3D releases) or per image
   (2D releases); set ``group`` to the patient id when several cases belong to one patient, so the
   train/validation split never separates them. The label channel names come from the cases'
   :class:`LabelMap`. ``iter_cases`` only ever gets a site from :meth:`Preparer.resolve_sites`, which
   rejects unknown names for every dataset; override ``available_sites`` when the release defines its
   sites (FeTS partitions) and ``site_aliases`` for other accepted spellings (release folder names).
   :func:`site_folder` and :func:`find_files` find a site's folder and its files.
2. Loading: return ``RawCase(image, label, affine=..., slice_axis=...)``:
   3D volume: image (X, Y, Z) any real dtype, label same shape, ``slice_axis`` = depth axis (e.g. 2);
   2D image: image (H, W, 3) or (H, W) uint8, label (H, W), ``slice_axis=None``.
   Use :func:`load_volume_pair` (NIfTI, MetaImage, NRRD or DICOM series, geometry checked; see
   :mod:`fedfms.data.volume_io`) / :func:`read_error` so unreadable files raise :class:`DataError`
   naming the file. Do not validate shapes, NaNs or label values yourself: the writer does it for every case.
3. A problem found while listing files (an image without label, ...) is reported by yielding
   ``broken_case(case_id, source, problem)``, so ``--skip-bad`` treats it like any other bad case.
   A case that an option deliberately leaves out raises :class:`CaseExcluded` from its loader: it is
   skipped and listed with the reason even without ``--skip-bad``.
4. Dataset-specific command-line options: override ``add_arguments(parser)``; every option it adds is
   passed to ``iter_cases`` and ``available_sites`` as a keyword (argparse ``dest``). Check values at
   parse time (``choices``, ``type=int_in_range(...)``) so a bad value is a usage message.
   The module docstring is the dataset's ``--help`` text: document the release layout there.
5. Register at import time: ``register(MyPreparer())`` at module level. Every module of the package
   ``fedfms.data`` is imported by :func:`available_datasets` / :func:`get_preparer`, so nothing else
   needs editing: ``tools/prepare_data.py``, the job generator and the study pick the new dataset up
   (``fedfms.registry.datasets`` derives sites and ``num_classes`` from the preparer).
"""

from __future__ import annotations

import abc
import argparse
import importlib
import logging
import pkgutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedfms.data.errors import DataError, read_error
from fedfms.data.volume_io import check_same_geometry, load_nifti, read_volume
from fedfms.transforms.labels import LabelMap

logger = logging.getLogger(__name__)


class CaseExcluded(DataError):
    """Raised by a case loader for a case that the chosen options leave out (not an error).

    The writer always skips such a case, with or without ``--skip-bad``, and lists it with ``problem``
    as the reason (in the summary and in ``metadata.skipped``), so the user sees what was dropped.
    """


class SiteError(ValueError):
    """A requested site name that the dataset does not have (a usage error, raised before any writing)."""


@dataclass
class RawCase:
    """One loaded case, before any processing.

    image: 3D volume (X, Y, Z) of any real dtype, or a 2D image (H, W, 3) / (H, W) uint8.
    label: raw label values, same spatial shape as image.
    affine: 4x4 voxel-to-world matrix of a volume (None for 2D images).
    slice_axis: axis of ``image`` to slice 2D samples along (None for 2D images).
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray | None = None
    slice_axis: int | None = None


@dataclass(frozen=True)
class Case:
    """A lazily loadable case of a release.

    case_id: volume / image id, unique within a site and safe as a file name.
    image_source, label_source: where the image / label come from (file path, possibly with an index
        such as ``images.npy[12]``); used in messages and, relative to the release root, in metadata.
    load: reads the files and returns a :class:`RawCase` (raises :class:`DataError` if unreadable).
    label_map: raw label values -> binary channels (also defines the allowed values).
    group: patient id for the train/validation split (defaults to case_id).
    empty_slice_stride: for volumes, keep only slices with foreground plus every k-th other slice
        (None keeps all slices).
    """

    case_id: str
    image_source: str
    label_source: str
    load: Callable[[], RawCase]
    label_map: LabelMap
    group: str | None = None
    empty_slice_stride: int | None = None

    @property
    def split_group(self) -> str:
        return self.group if self.group is not None else self.case_id


class Preparer(abc.ABC):
    """Reader of one public release. Subclasses set the class attributes and implement iter_cases.

    name: dataset name; sites: default site names, in order; source_release: what release it reads;
    label_channels: names of the label channels with the default options (their number is the
    networks' ``num_classes``); volumetric: True for 3D volumes sliced into 2D samples, False for 2D images.
    """

    name: str
    sites: tuple[str, ...]
    source_release: str
    label_channels: tuple[str, ...]
    volumetric: bool

    @abc.abstractmethod
    def iter_cases(self, src: Path, site: str, **options) -> Iterable[Case]:
        """Yield the cases of ``site`` found under the release root ``src`` (deterministic order)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add dataset-specific command-line options (their dest names become iter_cases keywords)."""

    def available_sites(self, src: Path, **options) -> tuple[str, ...]:
        """Every site name this release offers (default: ``sites``; override when the files define them)."""
        return self.sites

    def site_aliases(self, site: str) -> tuple[str, ...]:
        """Other names accepted for ``site`` in ``--sites`` (e.g. the release's folder names)."""
        return ()

    def resolve_sites(self, sites: Iterable[str] | None, src: Path, options: dict | None = None) -> list[str]:
        """Requested site names (None: the defaults ``sites``) -> canonical names, in order, without repeats.

        Names and aliases match case-insensitively. Raises SiteError listing the available sites if any
        requested (or default) site does not exist, so a typo fails before anything is written.
        """
        available = self.available_sites(src, **(options or {}))
        lookup = {site.lower(): site for site in available}
        for site in available:  # after all canonical names, so an alias never shadows a site's own name
            for alias in self.site_aliases(site):
                lookup.setdefault(alias.lower(), site)
        wanted = [str(s) for s in (self.sites if sites is None else sites)]
        unknown = [s for s in wanted if s.lower() not in lookup]
        if unknown:
            raise SiteError(f"unknown {self.name} site(s) {unknown}; available: {', '.join(available)}")
        return list(dict.fromkeys(lookup[s.lower()] for s in wanted))


def int_in_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse ``type`` for an integer option in [low, high] (high None: no upper bound), so a bad value
    is a usage message rather than an error during preparation."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}, got {value}")
        return value

    return parse


_REGISTRY: dict[str, Preparer] = {}
_IMPORT_ERRORS: dict[str, BaseException] = {}


def register(preparer: Preparer) -> Preparer:
    """Add a preparer to the registry under ``preparer.name`` (call at module import)."""
    existing = _REGISTRY.get(preparer.name)
    if existing is not None and type(existing) is not type(preparer):
        raise ValueError(f"dataset name {preparer.name!r} is already registered by {type(existing).__name__}")
    _REGISTRY[preparer.name] = preparer
    return preparer


def _discover() -> None:
    """Import every module of fedfms.data so that preparer modules register themselves.

    A module that fails to import is remembered (and logged) rather than fatal, so one broken preparer
    does not disable the others; asking for it by name re-raises its error.
    """
    package = importlib.import_module("fedfms.data")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name in _IMPORT_ERRORS:
            continue
        try:
            importlib.import_module(f"fedfms.data.{module.name}")
        except Exception as exc:
            _IMPORT_ERRORS[module.name] = exc
            logger.warning("fedfms.data.%s failed to import and is unavailable: %s", module.name, exc)


def available_datasets() -> list[str]:
    """Names of all registered datasets."""
    _discover()
    return sorted(_REGISTRY)


def get_preparer(name: str) -> Preparer:
    """The registered preparer for dataset ``name``."""
    _discover()
    if name not in _REGISTRY and name in _IMPORT_ERRORS:
        raise ImportError(f"the {name} preparer (fedfms.data.{name}) failed to import") from _IMPORT_ERRORS[name]
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; registered: {sorted(_REGISTRY)}") from None


def site_folder(src: Path, names: Sequence[str], site: str) -> Path:
    """The one folder directly under ``src`` named any of ``names`` (case-insensitive) holding ``site``.

    Raises DataError on ``src`` if there is none or more than one.
    """
    wanted = {name.lower() for name in names}
    found = sorted(p for p in Path(src).iterdir() if p.is_dir() and p.name.lower() in wanted)
    if len(found) != 1:
        what = "no folder" if not found else f"{len(found)} folders ({', '.join(p.name for p in found)})"
        raise DataError(src, f"expected one folder for site {site} named {' or '.join(names)}, found {what}")
    return found[0]


def find_files(root: Path, *suffixes: str, recursive: bool = True) -> list[Path]:
    """Files under ``root`` (all levels, or only directly in it) whose suffix is one of ``suffixes``
    (case-insensitive, e.g. ".tif"), sorted."""
    candidates = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in suffixes)


def load_volume_pair(image_path: str | Path, label_path: str | Path, slice_axis: int = 2) -> RawCase:
    """Read an image/label volume pair -> RawCase to be sliced along ``slice_axis`` (default: depth, 2).

    Any format of :mod:`fedfms.data.volume_io` (NIfTI, MetaImage, NRRD, DICOM series folder), each
    header's declared size checked before reading. DataError naming both files when the label's
    geometry (spacing, direction, origin) differs from the image's. Trailing singleton axes
    (X, Y, Z, 1) are dropped; other shapes are left for the writer to reject.
    """
    image, label = read_volume(image_path), read_volume(label_path)
    check_same_geometry(image, label)
    image_array, label_array = image.array, label.array
    while image_array.ndim > 3 and image_array.shape[-1] == 1:
        image_array = image_array[..., 0]
    while label_array.ndim > 3 and label_array.shape[-1] == 1:
        label_array = label_array[..., 0]
    return RawCase(image_array, label_array, affine=image.affine, slice_axis=slice_axis)


def load_rgb(path: str | Path) -> np.ndarray:
    """Read a colour image (JPEG, PNG with or without alpha, BMP, TIFF; via PIL) -> (H, W, 3) uint8."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
                raise DataError(path, f"unsupported image mode {im.mode!r}; expected an 8-bit colour image")
            return np.asarray(im.convert("RGB"))
    except DataError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError ... for corrupt files
        raise read_error(path, exc) from exc


def load_mask(path: str | Path) -> np.ndarray:
    """Read a 2D label image -> (H, W) uint8 raw values.

    8-bit grey and grey-palette images give their grey values, bilevel images 0/255, colour-palette
    images their palette indices (label PNGs); an RGB file must be grey (r == g == b).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "1":
                return np.asarray(im, dtype=np.uint8) * 255
            if im.mode == "P":
                palette = np.asarray(im.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
                if not (palette == palette[:, :1]).all():
                    return np.asarray(im, dtype=np.uint8)
            if im.mode in ("L", "P"):
                return np.asarray(im.convert("L"), dtype=np.uint8)
            if im.mode in ("RGB", "RGBA"):
                rgb = np.asarray(im)[..., :3]
                if (rgb != rgb[..., :1]).any():
                    raise DataError(path, "label image has colour pixels; expected grey levels")
                return np.ascontiguousarray(rgb[..., 0])
            raise DataError(path, f"unsupported label image mode {im.mode!r}; expected 8-bit grey")
    except DataError:
        raise
    except Exception as exc:
        raise read_error(path, exc) from exc


def pair_by_stem(
    images: Iterable[Path], labels: Iterable[Path], label_stem: Callable[[Path], str] | None = None
) -> list[tuple[str, Path, Path | None, str | None]]:
    """Pair 2D images with their label files by file stem -> sorted (stem, image, label, problem).

    label_stem: the image stem a label file belongs to (default: its own stem).
    Unpaired or ambiguous files come back with ``label`` None and a ``problem`` text (the path is then
    the offending file), ready for :func:`broken_case`.
    """
    def by_stem(paths: Iterable[Path], stem: Callable[[Path], str]) -> dict[str, list[Path]]:
        groups: dict[str, list[Path]] = {}
        for p in sorted(paths):
            groups.setdefault(stem(p), []).append(p)
        return groups

    image_groups = by_stem(images, lambda p: p.stem)
    label_groups = by_stem(labels, label_stem or (lambda p: p.stem))
    pairs: list[tuple[str, Path, Path | None, str | None]] = []
    for stem in sorted(set(image_groups) | set(label_groups)):
        found = image_groups.get(stem, []) + label_groups.get(stem, [])
        if len(image_groups.get(stem, [])) > 1 or len(label_groups.get(stem, [])) > 1:
            pairs.append((stem, found[0], None, f"file stem {stem!r} is not unique: {', '.join(map(str, found))}"))
        elif stem not in label_groups:
            pairs.append((stem, found[0], None, "image without annotation (no label file with the same stem)"))
        elif stem not in image_groups:
            pairs.append((stem, found[0], None, "annotation without an image"))
        else:
            pairs.append((stem, found[0], found[1], None))
    return pairs


def broken_case(case_id: str, source: str | Path, problem: str, label_map: LabelMap) -> Case:
    """A case that fails on load with ``problem`` (for issues found while listing files)."""

    def fail() -> RawCase:
        raise DataError(source, problem)

    return Case(case_id, str(source), str(source), fail, label_map)
