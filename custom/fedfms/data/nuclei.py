"""Nuclei vs background: PanNuke tissue types Adrenal_gland, Esophagus, Bile-duct, Uterus, MoNuSAC, TNBC, MoNuSeg.

``SRC`` holds one folder per release as extracted (names matched case-insensitively):

- ``PanNuke/`` (the four PanNuke sites): ``Fold N/images/foldN/images.npy`` (N, 256, 256, 3) float64 RGB
  in 0..255, ``Fold N/images/foldN/types.npy`` (N,) tissue names, ``Fold N/masks/foldN/masks.npy``
  (N, 256, 256, 6) float64: channels 0-4 instance maps of neoplastic, inflammatory, connective,
  dead and epithelial nuclei, channel 5 background. Nuclei = any instance in channels 0-4. A site is
  one tissue type over the selected folds (``--pannuke-folds``: ``all`` (default), ``reference`` = the
  reference code's Adrenal_gland and Esophagus from fold 2, Bile-duct and Uterus from fold 3, or a
  list such as ``2,3``). Patches come without patient ids, so each patch is its own split unit;
  background-only patches are kept.
- ``MoNuSAC/``: ``MoNuSAC_images_and_annotations/<patient>/<patient>_<n>.{svs,tif,xml}`` (and the
  same for ``MoNuSAC Testing Data and Annotations``). The ``.tif`` next to each ``.svs`` holds the same
  pixels and is what is read (no OpenSlide needed). Annotations of class ``Ambiguous`` (test set:
  regions of faint or unlabelled nuclei) are not nuclei and stay background. Split by patient.
- ``TNBC/``: ``TNBC_NucleiSegmentation/Slide_XX/XX_Y.png`` (RGB or RGBA) with ``GT_XX/XX_Y.png``
  (0 background, 255 nucleus). Slide XX is one patient: split by slide.
- ``MoNuSeg/``: ``MoNuSeg 2018 Training Data/Tissue Images/*.tif`` with
  ``MoNuSeg 2018 Training Data/Annotations/*.xml`` and ``MoNuSegTestData/*.{tif,xml}``; images and
  annotations are paired by file stem. Split by TCGA patient (``TCGA-XX-XXXX``).

MoNuSAC and MoNuSeg outlines are ImageScope XML polygons, filled by :mod:`fedfms.data.nuclei_polygons`.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from fedfms.data.nuclei_polygons import rasterize, read_polygons
from fedfms.data.preparation import (
    Case,
    DataError,
    Preparer,
    RawCase,
    broken_case,
    find_files,
    load_mask,
    load_rgb,
    pair_by_stem,
    read_error,
    register,
    site_folder,
)
from fedfms.transforms.labels import LabelMap

PANNUKE_SITES = ("Adrenal_gland", "Esophagus", "Bile-duct", "Uterus")
SITE_FOLDERS = {**{s: "PanNuke" for s in PANNUKE_SITES}, "MoNuSAC": "MoNuSAC", "TNBC": "TNBC", "MoNuSeg": "MoNuSeg"}

# Fold selections for the PanNuke sites: None = every fold found.
PANNUKE_FOLDS: dict[str, dict[str, tuple[int, ...]] | None] = {
    "all": None,
    "reference": {"Adrenal_gland": (2,), "Esophagus": (2,), "Bile-duct": (3,), "Uterus": (3,)},
}

# Raw labels: PanNuke max instance id over the five nucleus channels, TNBC grey mask, XML rasters 0/1.
_INSTANCES = LabelMap({"nuclei": None}, require_foreground=False)  # background-only patches exist
_TNBC = LabelMap({"nuclei": (255,)}, allowed=(0, 255))
_BINARY = LabelMap({"nuclei": (1,)}, allowed=(0, 1))


# -------------------------------------------------------------------------------------------- PanNuke
def _fold_number(images: Path) -> int:
    match = re.search(r"fold\s*_?(\d+)", images.parent.name, re.IGNORECASE)
    if match is None:
        raise DataError(images, "cannot tell the fold number: expected the file in a folder named like 'fold1'")
    return int(match.group(1))


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")  # folds are several GB: read patch by patch
    except Exception as exc:
        raise read_error(path, exc) from exc


def _pannuke_fold(images_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, Path]:
    """images (N, H, W, 3), types (N,), masks (N, H, W, 6) of the fold holding images_path."""
    types_path = images_path.with_name("types.npy")
    fold_dir = images_path.parent.parent.parent
    masks_paths = sorted(fold_dir.rglob("masks.npy"))
    if not types_path.is_file():
        raise DataError(types_path, "missing: PanNuke keeps types.npy next to images.npy")
    if len(masks_paths) != 1:
        raise DataError(fold_dir, f"expected one masks.npy under the fold folder, found {len(masks_paths)}")
    images, masks = _open_npy(images_path), _open_npy(masks_paths[0])
    try:
        types = np.load(types_path).astype(str)  # tissue names (str or bytes arrays)
    except Exception as exc:
        raise read_error(types_path, exc) from exc
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(images_path, f"shape {images.shape}; expected (N, H, W, 3)")
    if masks.shape != images.shape[:3] + (6,):
        raise DataError(masks_paths[0], f"shape {masks.shape}; expected {images.shape[:3] + (6,)} to match {images_path.name}")
    if types.shape != images.shape[:1]:
        raise DataError(types_path, f"shape {types.shape}; expected ({images.shape[0]},) to match {images_path.name}")
    return images, types, masks, masks_paths[0]


def _pannuke_patch(images: np.ndarray, masks: np.ndarray, i: int, source: str) -> RawCase:
    rgb = np.asarray(images[i])
    if not np.isfinite(rgb).all():
        raise DataError(source, "NaN or infinite intensities")
    if rgb.min() < 0 or rgb.max() > 255:
        raise DataError(source, f"intensities in [{rgb.min()}, {rgb.max()}]; expected 0..255")
    instances = np.asarray(masks[i][..., :5]).max(axis=-1)  # channel 5 is background
    return RawCase(np.rint(rgb).astype(np.uint8), instances)


def _pannuke(root: Path, site: str, folds: str) -> Iterator[Case]:
    selection = _parse_folds(folds)
    wanted = selection.get(site) if isinstance(selection, dict) else selection
    found = sorted(root.rglob("images.npy"), key=_fold_number)
    if not found:
        raise DataError(root, "no PanNuke fold found (expected 'Fold N/images/foldN/images.npy')")
    for images_path in found:
        fold = _fold_number(images_path)
        if wanted is not None and fold not in wanted:
            continue
        images, types, masks, masks_path = _pannuke_fold(images_path)
        for i in np.flatnonzero(types == site):
            source = f"{images_path}[{i}]"
            load = partial(_pannuke_patch, images, masks, int(i), source)
            yield Case(f"fold{fold}_{i:05d}", source, f"{masks_path}[{i}]", load, _INSTANCES)


def _parse_folds(folds: str) -> dict[str, tuple[int, ...]] | tuple[int, ...] | None:
    """'all' / 'reference' / '2,3' -> None (every fold) / per-site folds / fold numbers."""
    if folds in PANNUKE_FOLDS:
        return PANNUKE_FOLDS[folds]
    try:
        return tuple(int(f) for f in folds.split(","))
    except ValueError:
        raise ValueError(f"--pannuke-folds: expected {sorted(PANNUKE_FOLDS)} or fold numbers like '2,3', got {folds!r}") from None


def _folds_option(text: str) -> str:
    """argparse type of --pannuke-folds: checked at parse time, kept as given (it goes into the metadata)."""
    try:
        _parse_folds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--pannuke-folds: ")) from None
    return text


# ------------------------------------------------------------------------------ MoNuSAC, MoNuSeg, TNBC
def _polygon_case(image_path: Path, xml_path: Path, exclude: Sequence[str] = ()) -> RawCase:
    image = load_rgb(image_path)
    return RawCase(image, rasterize(read_polygons(xml_path, exclude), *image.shape[:2]))


def _mask_case(image_path: Path, mask_path: Path) -> RawCase:
    return RawCase(load_rgb(image_path), load_mask(mask_path))


def _paired(
    pairs: list[tuple[str, Path, Path | None, str | None]],
    load: Callable[[Path, Path], RawCase],
    label_map: LabelMap,
    group: Callable[[Path], str],
) -> Iterator[Case]:
    for stem, image_path, label_path, problem in pairs:
        if label_path is None:
            yield broken_case(stem, image_path, problem, label_map)
        else:
            yield Case(stem, str(image_path), str(label_path), partial(load, image_path, label_path), label_map,
                       group=group(image_path))


def _monusac(root: Path) -> Iterator[Case]:
    images, labels = find_files(root, ".tif", ".tiff"), find_files(root, ".xml")
    tif_stems = {p.stem for p in images}
    for svs in find_files(root, ".svs"):  # the reader uses the .tif the release ships next to each .svs
        if svs.stem not in tif_stems:
            yield broken_case(svs.stem, svs, f"no {svs.stem}.tif next to it (the release ships both; the .tif is read)", _BINARY)
            labels = [p for p in labels if p.stem != svs.stem]
    pairs = pair_by_stem(images, labels)
    yield from _paired(pairs, partial(_polygon_case, exclude=("Ambiguous",)), _BINARY, group=lambda p: p.parent.name)


def _monuseg(root: Path) -> Iterator[Case]:
    pairs = pair_by_stem(find_files(root, ".tif", ".tiff"), find_files(root, ".xml"))
    yield from _paired(pairs, _polygon_case, _BINARY, group=lambda p: "-".join(p.stem.split("-")[:3]))


def _tnbc(root: Path) -> Iterator[Case]:
    """Slide_XX/*.png paired with GT_XX/*.png; a slide is one patient."""
    def numbered(prefix: str) -> dict[str, Path]:
        return {m.group(1): d for d in root.rglob(f"{prefix}_*") if d.is_dir() and (m := re.fullmatch(rf"{prefix}_(\d+)", d.name))}

    slides, gts = numbered("Slide"), numbered("GT")
    if not slides:
        raise DataError(root, "no TNBC Slide_XX folder found")
    for number in sorted(set(slides) | set(gts)):
        images = find_files(slides[number], ".png") if number in slides else []
        masks = find_files(gts[number], ".png") if number in gts else []
        yield from _paired(pair_by_stem(images, masks), _mask_case, _TNBC, group=lambda p: p.parent.name)


class NucleiPreparer(Preparer):
    """Seven nuclei sites -> one label channel (nuclei); split by patient where the release names one."""

    name = "nuclei"
    sites = (*PANNUKE_SITES, "MoNuSAC", "TNBC", "MoNuSeg")
    source_release = "PanNuke (2020), MoNuSAC (2020), TNBC (Naylor et al. 2018), MoNuSeg (2018)"
    label_channels = _BINARY.names
    volumetric = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--pannuke-folds", dest="pannuke_folds", default="all", type=_folds_option,
                            help="PanNuke folds per tissue site: 'all' (default), 'reference' (Adrenal_gland, "
                                 "Esophagus: fold 2; Bile-duct, Uterus: fold 3) or fold numbers such as '2,3'")

    def iter_cases(self, src: Path, site: str, pannuke_folds: str = "all") -> Iterator[Case]:
        """Yield one case per image (PanNuke: per patch) of ``site``; label = nuclei vs background."""
        root = site_folder(Path(src), (SITE_FOLDERS[site],), site)
        if site in PANNUKE_SITES:
            yield from _pannuke(root, site, pannuke_folds)
        else:
            yield from {"MoNuSAC": _monusac, "TNBC": _tnbc, "MoNuSeg": _monuseg}[site](root)


register(NucleiPreparer())
