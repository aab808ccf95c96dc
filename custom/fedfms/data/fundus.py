"""Fundus optic disc (OD) and optic cup (OC): REFUGE, ORIGA, G1020 and Drishti-GS1 as four sites.

``SRC`` holds one folder per site, each the public release as extracted (folder names are matched
case-insensitively; a site folder may contain the release's own top folder):

- ``REFUGE/``: the REFUGE challenge release. Images ``*.jpg`` (``Training400/{Glaucoma,Non-Glaucoma}/``,
  ``REFUGE-Validation400/``, ``Test400/``), masks ``*.bmp`` with the same file stem
  (``Annotation-Training400/Disc_Cup_Masks/...``, ``REFUGE-Validation400-GT/Disc_Cup_Masks/``,
  ``REFUGE-Test-GT/Disc_Cup_Masks/{G,N}/``); any folder arrangement works, images and masks are
  paired by stem. The ``Disc_Cup_Fovea_Illustration/`` JPEGs of the annotations are not read. Mask values: 0 = cup, 128 = disc outside the cup, 255 = background.
- ``ORIGA/``: ``Images/*.jpg`` with ``Masks/<stem>.png`` (0 = background, 1 = disc outside the cup,
  2 = cup); a copy without ``Masks/`` PNGs is read from MATLAB ``<stem>.mat`` files anywhere in the
  site folder, each holding one 2D array with the same values (e.g. ``Semi-automatic/``).
- ``G1020/``: ``Images/*.jpg`` (the per-image ``*.json`` polygons next to them are not needed) with
  ``Masks/<stem>.png``, values as ORIGA. Some G1020 images have no cup annotation (mask without
  value 2): they are left out by default (``--g1020-missing-cup skip``) and listed with the reason
  in the summary and in ``metadata.skipped``; ``empty`` keeps them with an empty OC channel, as the
  reference code does.
- ``Drishti-GS1/``: ``Drishti-GS1_files/{Training,Test}/Images/*.png`` with per-image expert soft maps
  ``.../<stem>/SoftMap/<stem>_ODsegSoftmap.png`` and ``<stem>_cupsegSoftmap.png`` (``Training/GT/`` and
  ``Test/Test_GT/``). Grey value = fraction of the experts marking the pixel; foreground is value
  >= ``--drishti-threshold`` (default 100 of 255: at least two of the four experts, as the reference).

Label channels: OD, OC. Every release is first decoded into one index map (0 background, 1 disc
outside the cup, 2 cup); the OD convention then picks the OD channel: ``disc`` (default, the paper's
optic disc = the whole disc including the cup) or ``rim`` (disc minus cup, the reference code's "OD").

Fundus photographs are 1600-2900 px wide and the model input is 1024 px, so samples are stored with
their longer side scaled down to ``--max-size`` (default 1024, 0 keeps full size), aspect ratio kept:
images with antialiased bilinear resampling, labels by area coverage >= 0.5 of the disc and cup masks
on the same pixel grid (keeps geometry, and the cup stays inside the disc). This keeps prepared data
about 10x smaller; the bundles still resize every sample to the model input.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from fedfms.data.preparation import (
    Case,
    CaseExcluded,
    DataError,
    Preparer,
    RawCase,
    broken_case,
    find_files,
    int_in_range,
    load_mask,
    load_rgb,
    pair_by_stem,
    read_error,
    register,
    site_folder,
)
from fedfms.transforms.labels import LabelMap

# Canonical index map every release is decoded into (0 background, 1 disc outside the cup, 2 cup).
_DISC, _CUP = (1, 2), (2,)

OD_CONVENTIONS: dict[str, LabelMap] = {
    # the paper's OD: the whole optic disc (cup included)
    "disc": LabelMap({"OD": _DISC, "OC": _CUP}, allowed=(0, 1, 2)),
    # the reference code's OD channel: disc minus cup (neuroretinal rim)
    "rim": LabelMap({"OD": (1,), "OC": _CUP}, allowed=(0, 1, 2)),
}

# Release mask encodings -> (disc, cup) masks. LabelMap validates the value set (unknown values raise).
_REFUGE_MASK = LabelMap({"disc": (0, 128), "cup": (0,)}, allowed=(0, 128, 255), require_foreground=False)
_INDEX_MASK = LabelMap({"disc": (1, 2), "cup": (2,)}, allowed=(0, 1, 2), require_foreground=False)

SITE_FOLDERS: dict[str, tuple[str, ...]] = {
    "REFUGE": ("REFUGE",),
    "ORIGA": ("ORIGA", "ORIGA-light"),
    "G1020": ("G1020",),
    "Drishti-GS1": ("Drishti-GS1", "Drishti-GS", "Drishti-GS1_files"),
}


def _find_dir(root: Path, name: str) -> list[Path]:
    """Folders called ``name`` (case-insensitive) at or below ``root``, sorted."""
    return sorted(p for p in [root, *root.rglob("*")] if p.is_dir() and p.name.lower() == name.lower())


# ---------------------------------------------------------------------------------------------- readers
def _read_mat(path: Path) -> np.ndarray:
    """The single 2D numeric array of a MATLAB file (ORIGA annotations) -> (H, W) array."""
    from scipy.io import loadmat

    try:
        content = loadmat(path)
    except Exception as exc:
        raise read_error(path, exc) from exc
    arrays = {k: v for k, v in content.items() if not k.startswith("__") and isinstance(v, np.ndarray) and v.ndim == 2}
    if len(arrays) != 1:
        raise DataError(path, f"expected one 2D array in the .mat file, found {sorted(arrays) or 'none'}")
    return next(iter(arrays.values()))


def _decode(mask: np.ndarray, encoding: LabelMap, source: Path) -> np.ndarray:
    """Release mask -> canonical index map (0 background, 1 disc outside the cup, 2 cup), validated."""
    try:
        disc, cup = encoding(mask).astype(bool)
    except ValueError as exc:
        raise DataError(source, str(exc)) from None
    return (disc | cup).astype(np.uint8) + cup


def _shrink(image: np.ndarray, index: np.ndarray, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale image (H, W, 3) and index map so the longer side is <= max_size (no-op if it already is)."""
    h, w = index.shape
    scale = max_size / max(h, w) if max_size else 1.0
    if scale >= 1.0:
        return image, index
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL sizes are (width, height)
    small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))

    def coverage(mask: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(mask.astype(np.float32)).resize(size, Image.BOX)) >= 0.5

    # cup coverage <= disc coverage everywhere, so the thresholded cup stays inside the disc
    return small, coverage(index >= 1).astype(np.uint8) + coverage(index == 2)


def _load(
    image_path: Path,
    read_mask: Callable[[], np.ndarray],
    mask_source: Path,
    max_size: int,
    require_cup: bool = False,
) -> RawCase:
    """Image and index map of one case, scaled to max_size. require_cup: leave the case out (CaseExcluded)
    if its mask has no cup (G1020 images whose cup was not annotated)."""
    image = load_rgb(image_path)
    index = read_mask()
    if index.shape != image.shape[:2]:
        raise DataError(mask_source, f"mask shape {index.shape} differs from image {image_path.name} shape {image.shape[:2]}")
    if require_cup and not (index == 2).any():
        raise CaseExcluded(mask_source, "no cup annotation (mask without value 2): left out by --g1020-missing-cup "
                                        "skip (default); 'empty' keeps it with an empty OC channel")
    image, index = _shrink(image, index, max_size)
    return RawCase(image, index)


# ------------------------------------------------------------------------------------------- site layouts
# A layout pairs images with masks (see pair_by_stem) and says how to read a mask into the index map.
Layout = tuple[list[tuple[str, Path, Path | None, str | None]], Callable[[Path], np.ndarray]]


def _refuge(root: Path) -> Layout:
    """*.jpg images with *.bmp masks of the same stem, anywhere below root. The training annotations
    also ship Disc_Cup_Fovea_Illustration/<stem>.jpg (image with outlines drawn): not input images."""
    images = [p for p in find_files(root, ".jpg") if not any("illustration" in d.name.lower() for d in p.parents)]
    pairs = pair_by_stem(images, find_files(root, ".bmp"))
    return pairs, lambda p: _decode(load_mask(p), _REFUGE_MASK, p)


def _indexed(root: Path, site: str) -> Layout:
    """ORIGA / G1020: Images/ with Masks/<stem>.png (without any: <stem>.mat anywhere), values 0/1/2."""
    image_dirs = _find_dir(root, "Images")
    if len(image_dirs) != 1:
        raise DataError(root, f"expected one Images folder in the {site} release, found {len(image_dirs)}")
    masks = [p for d in _find_dir(root, "Masks") for p in find_files(d, ".png", recursive=False)]
    if not masks:  # releases without PNG masks ship MATLAB annotations
        masks = find_files(root, ".mat")

    def read(p: Path) -> np.ndarray:
        return _decode(_read_mat(p) if p.suffix.lower() == ".mat" else load_mask(p), _INDEX_MASK, p)

    return pair_by_stem(find_files(image_dirs[0], ".jpg", ".jpeg", ".png", recursive=False), masks), read


def _drishti(root: Path, threshold: int) -> Layout:
    images = [p for d in _find_dir(root, "Images") for p in find_files(d, ".png", recursive=False)]

    def read(od_path: Path) -> np.ndarray:
        cup_path = od_path.with_name(od_path.name.replace("_ODsegSoftmap", "_cupsegSoftmap"))
        if not cup_path.is_file():
            raise DataError(cup_path, "missing cup soft map next to the disc soft map")
        disc, cup = load_mask(od_path) >= threshold, load_mask(cup_path) >= threshold
        if disc.shape != cup.shape:
            raise DataError(cup_path, f"soft map shape {cup.shape} differs from {od_path.name} shape {disc.shape}")
        return (disc | cup).astype(np.uint8) + cup  # a cup pixel counts as disc

    pairs = pair_by_stem(images, root.rglob("*_ODsegSoftmap.png"), lambda p: p.stem.removesuffix("_ODsegSoftmap"))
    return pairs, read


class FundusPreparer(Preparer):
    """REFUGE, ORIGA, G1020, Drishti-GS1 -> two label channels (OD, OC); one image = one split unit."""

    name = "fundus"
    sites = ("REFUGE", "ORIGA", "G1020", "Drishti-GS1")
    source_release = "REFUGE (2018), ORIGA, G1020 (2020), Drishti-GS1 (2014)"
    label_channels = OD_CONVENTIONS["disc"].names
    volumetric = False

    def site_aliases(self, site: str) -> tuple[str, ...]:
        return SITE_FOLDERS[site]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--od", dest="od", choices=sorted(OD_CONVENTIONS), default="disc",
                            help="OD channel: 'disc' = whole optic disc (paper, default); 'rim' = disc minus cup (reference code)")
        parser.add_argument("--max-size", dest="max_size", type=int_in_range(0), default=1024,
                            help="scale stored samples so the longer side is at most this (0: keep full size; default 1024)")
        parser.add_argument("--drishti-threshold", dest="drishti_threshold", type=int_in_range(1, 255), default=100,
                            help="Drishti-GS1 soft map grey value counted as foreground (default 100: >= 2 of 4 experts)")
        parser.add_argument("--g1020-missing-cup", dest="g1020_missing_cup", choices=("skip", "empty"), default="skip",
                            help="G1020 images without cup annotation: leave out (default) or keep with an empty OC channel")

    def iter_cases(
        self,
        src: Path,
        site: str,
        od: str = "disc",
        max_size: int = 1024,
        drishti_threshold: int = 100,
        g1020_missing_cup: str = "skip",
    ) -> Iterator[Case]:
        """Yield one case per image of ``site``; the label is the index map read by OD_CONVENTIONS[od]."""
        if od not in OD_CONVENTIONS:
            raise ValueError(f"unknown OD convention {od!r}; expected one of {sorted(OD_CONVENTIONS)}")
        if max_size < 0 or not 1 <= drishti_threshold <= 255:
            raise ValueError("max_size must be >= 0 and drishti_threshold in 1..255")
        root = site_folder(Path(src), SITE_FOLDERS[site], site)
        pairs, read = {
            "REFUGE": lambda: _refuge(root),
            "ORIGA": lambda: _indexed(root, site),
            "G1020": lambda: _indexed(root, site),
            "Drishti-GS1": lambda: _drishti(root, drishti_threshold),
        }[site]()
        label_map = OD_CONVENTIONS[od]
        require_cup = site == "G1020" and g1020_missing_cup == "skip"
        for stem, image_path, mask_path, problem in pairs:
            if mask_path is None:
                yield broken_case(stem, image_path, problem, label_map)
            else:
                load = partial(_load, image_path, partial(read, mask_path), mask_path, max_size, require_cup)
                yield Case(stem, str(image_path), str(mask_path), load, label_map)


register(FundusPreparer())
