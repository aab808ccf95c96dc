"""Fundus optic disc (OD) and optic cup (OC): REFUGE, ORIGA, G1020 and Drishti-GS1 as four sites.

``SRC`` holds one folder per site, each the public release as extracted (folder names are matched
case-insensitively; a site folder may contain the release's own top folder):

- ``REFUGE/``: the REFUGE challenge release. Images ``*.jpg`` (``Training400/{Glaucoma,Non-Glaucoma}/``,
  ``REFUGE-Validation400/``, ``Test400/``), masks ``*.bmp`` with the same file stem
  (``Annotation-Training400/Disc_Cup_Masks/...``, ``REFUGE-Validation400-GT/Disc_Cup_Masks/``,
  ``REFUGE-Test-GT/Disc_Cup_Masks/{G,N}/``); any folder arrangement works, images and masks are
  paired by stem. Mask values: 0 = cup, 128 = disc outside the cup, 255 = background.
- ``ORIGA/``: ``Images/*.jpg`` with ``Masks/<stem>.png`` (0 = background, 1 = disc outside the cup,
  2 = cup) or a MATLAB ``<stem>.mat`` anywhere in the site folder holding one 2D array with the same
  values (e.g. the semi-automatic annotations).
- ``G1020/``: ``Images/*.jpg`` (the per-image ``*.json`` polygons next to them are not needed) with
  ``Masks/<stem>.png``, values as ORIGA. Some G1020 images have no cup annotation (mask without
  value 2): they are left out by default (``--g1020-missing-cup skip``); ``empty`` keeps them with an
  empty OC channel, as the reference code does.
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
import logging
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from fedfms.data.preparation import (
    Case,
    DataError,
    Preparer,
    RawCase,
    broken_case,
    read_error,
    register,
)
from fedfms.transforms.labels import LabelMap

log = logging.getLogger(__name__)

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


def site_root(src: Path, site: str) -> Path:
    """The folder of ``site`` under ``src`` (names in SITE_FOLDERS, case-insensitive)."""
    wanted = {name.lower() for name in SITE_FOLDERS[site]}
    found = sorted(p for p in Path(src).iterdir() if p.is_dir() and p.name.lower() in wanted)
    if len(found) != 1:
        what = "no folder" if not found else f"{len(found)} folders ({', '.join(p.name for p in found)})"
        raise DataError(src, f"expected one {site} folder named one of {list(SITE_FOLDERS[site])}, found {what}")
    return found[0]


def files_by_stem(paths: Iterable[Path]) -> tuple[dict[str, Path], list[tuple[str, list[Path]]]]:
    """Map file stem -> path, and the (stem, paths) of stems that occur more than once."""
    groups: dict[str, list[Path]] = {}
    for p in sorted(paths):
        groups.setdefault(p.stem, []).append(p)
    unique = {s: ps[0] for s, ps in groups.items() if len(ps) == 1}
    return unique, [(s, ps) for s, ps in groups.items() if len(ps) > 1]


def _find_dir(root: Path, name: str) -> list[Path]:
    """Folders called ``name`` (case-insensitive) at or below ``root``, sorted."""
    return sorted(p for p in [root, *root.rglob("*")] if p.is_dir() and p.name.lower() == name.lower())


def _files(folder: Path, *suffixes: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


# ---------------------------------------------------------------------------------------------- readers
def read_rgb(path: Path) -> np.ndarray:
    """A colour image file (JPEG, PNG with or without alpha, BMP, TIFF readable by PIL) -> (H, W, 3) uint8."""
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


def read_gray(path: Path) -> np.ndarray:
    """A single-channel mask image (BMP/PNG, 8-bit grey, bilevel or palette indices) -> (H, W) uint8."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "1":
                return np.asarray(im, dtype=np.uint8) * 255
            if im.mode == "P" and not _grey_palette(im):
                return np.asarray(im, dtype=np.uint8)  # colour palette: the indices are the labels
            if im.mode in ("L", "P"):
                return np.asarray(im.convert("L"), dtype=np.uint8)
            if im.mode in ("RGB", "RGBA"):
                rgb = np.asarray(im)[..., :3]
                if (rgb != rgb[..., :1]).any():
                    raise DataError(path, "mask has colour pixels; expected a grey-level mask")
                return np.ascontiguousarray(rgb[..., 0])
            raise DataError(path, f"unsupported mask mode {im.mode!r}; expected an 8-bit grey mask")
    except DataError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError ... for corrupt files
        raise read_error(path, exc) from exc


def _grey_palette(im: Image.Image) -> bool:
    """True if every palette entry of a "P" image is a grey (r == g == b)."""
    rgb = np.asarray(im.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
    return bool((rgb == rgb[:, :1]).all())


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
) -> RawCase:
    image = read_rgb(image_path)
    index = read_mask()
    if index.shape != image.shape[:2]:
        raise DataError(mask_source, f"mask shape {index.shape} differs from image {image_path.name} shape {image.shape[:2]}")
    image, index = _shrink(image, index, max_size)
    return RawCase(image, index)


# ------------------------------------------------------------------------------------------- site layouts
# A layout lists (stem, image, mask or None, problem or None) and says how to read a mask into the index map.
Pair = tuple[str, Path, Path | None, str | None]
Layout = tuple[list[Pair], Callable[[Path], np.ndarray]]


def pair_by_stem(images: dict[str, Path], masks: dict[str, Path], duplicates: list[tuple[str, list[Path]]]) -> list[Pair]:
    """Pair images and annotations by file stem; unpaired or ambiguous files get a problem text."""
    pairs: list[Pair] = [(s, ps[0], None, f"file stem {s!r} is not unique: {', '.join(map(str, ps))}") for s, ps in duplicates]
    for stem in sorted(images):
        problem = None if stem in masks else "image without annotation (no mask with the same file stem)"
        pairs.append((stem, images[stem], masks.get(stem), problem))
    orphans = set(masks) - set(images) - {s for s, _ in duplicates}
    pairs += [(s, masks[s], None, "annotation without an image") for s in sorted(orphans)]
    return pairs


def _refuge(root: Path) -> Layout:
    images, dup = files_by_stem(p for p in root.rglob("*") if p.suffix.lower() == ".jpg")
    masks, dup_masks = files_by_stem(p for p in root.rglob("*") if p.suffix.lower() == ".bmp")
    return pair_by_stem(images, masks, dup + dup_masks), lambda p: _decode(read_gray(p), _REFUGE_MASK, p)


def _indexed(root: Path, site: str) -> Layout:
    """ORIGA / G1020: Images/ with Masks/<stem>.png (or <stem>.mat anywhere), values 0/1/2."""
    image_dirs = _find_dir(root, "Images")
    if len(image_dirs) != 1:
        raise DataError(root, f"expected one Images folder in the {site} release, found {len(image_dirs)}")
    images, dup = files_by_stem(_files(image_dirs[0], ".jpg", ".jpeg", ".png"))
    candidates = [p for d in _find_dir(root, "Masks") for p in _files(d, ".png")]
    candidates += [p for p in root.rglob("*") if p.suffix.lower() == ".mat"]
    masks, dup_masks = files_by_stem(candidates)

    def read(p: Path) -> np.ndarray:
        return _decode(_read_mat(p) if p.suffix.lower() == ".mat" else read_gray(p), _INDEX_MASK, p)

    return pair_by_stem(images, masks, dup + dup_masks), read


def _drishti(root: Path, threshold: int) -> Layout:
    images, dup = files_by_stem(p for d in _find_dir(root, "Images") for p in _files(d, ".png"))
    od_maps, dup_maps = files_by_stem(root.rglob("*_ODsegSoftmap.png"))
    masks = {s.removesuffix("_ODsegSoftmap"): p for s, p in od_maps.items()}

    def read(od_path: Path) -> np.ndarray:
        cup_path = od_path.with_name(od_path.name.replace("_ODsegSoftmap", "_cupsegSoftmap"))
        if not cup_path.is_file():
            raise DataError(cup_path, "missing cup soft map next to the disc soft map")
        disc, cup = read_gray(od_path) >= threshold, read_gray(cup_path) >= threshold
        if disc.shape != cup.shape:
            raise DataError(cup_path, f"soft map shape {cup.shape} differs from {od_path.name} shape {disc.shape}")
        return (disc | cup).astype(np.uint8) + cup  # a cup pixel counts as disc

    return pair_by_stem(images, masks, dup + dup_maps), read


class FundusPreparer(Preparer):
    """REFUGE, ORIGA, G1020, Drishti-GS1 -> two label channels (OD, OC); one image = one split unit."""

    name = "fundus"
    sites = ("REFUGE", "ORIGA", "G1020", "Drishti-GS1")
    label_channels = ("OD", "OC")
    source_release = "REFUGE (2018), ORIGA, G1020 (2020), Drishti-GS1 (2014)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--od", dest="od", choices=sorted(OD_CONVENTIONS), default="disc",
                            help="OD channel: 'disc' = whole optic disc (paper, default); 'rim' = disc minus cup (reference code)")
        parser.add_argument("--max-size", dest="max_size", type=int, default=1024,
                            help="scale stored samples so the longer side is at most this (0: keep full size; default 1024)")
        parser.add_argument("--drishti-threshold", dest="drishti_threshold", type=int, default=100,
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
        **_: object,
    ) -> Iterator[Case]:
        """Yield one case per image of ``site``; the label is the index map read by OD_CONVENTIONS[od]."""
        if site not in SITE_FOLDERS:
            raise DataError(src, f"unknown fundus site {site!r}; expected one of {list(SITE_FOLDERS)}")
        if od not in OD_CONVENTIONS:
            raise ValueError(f"unknown OD convention {od!r}; expected one of {sorted(OD_CONVENTIONS)}")
        if max_size < 0 or not 1 <= drishti_threshold <= 255:
            raise ValueError("max_size must be >= 0 and drishti_threshold in 1..255")
        root = site_root(Path(src), site)
        pairs, read = {
            "REFUGE": lambda: _refuge(root),
            "ORIGA": lambda: _indexed(root, site),
            "G1020": lambda: _indexed(root, site),
            "Drishti-GS1": lambda: _drishti(root, drishti_threshold),
        }[site]()
        label_map = OD_CONVENTIONS[od]
        skipped = []
        for stem, image_path, mask_path, problem in pairs:
            if mask_path is None:
                yield broken_case(stem, image_path, problem, label_map)
                continue
            if site == "G1020" and g1020_missing_cup == "skip":
                try:  # deciding needs the mask; a bad one becomes a bad case rather than stopping the listing
                    if not (read(mask_path) == 2).any():
                        skipped.append(stem)
                        continue
                except DataError as exc:
                    yield broken_case(stem, exc.source, exc.problem, label_map)
                    continue
            load = partial(_load, image_path, partial(read, mask_path), mask_path, max_size)
            yield Case(stem, str(image_path), str(mask_path), load, label_map)
        if skipped:
            log.info("G1020: left out %d images without a cup annotation: %s", len(skipped), ", ".join(skipped))


register(FundusPreparer())
