"""Turn a preparer's cases into a prepared site folder, atomically and reproducibly.

Output of :func:`prepare_site` (the contract the bundles read, README "Data")::

    OUT/DATASET/SITE/datalist.json      training / validation / test lists + metadata
    OUT/DATASET/SITE/images/ID[_sNNN].npy   (C, H, W) float16 in [0, 1] (volumes) or uint8 (RGB)
    OUT/DATASET/SITE/labels/ID[_sNNN].npy   (L, H, W) uint8 in {0, 1}
    OUT/DATASET/dataset.json             sites with sample counts (rebuilt from all site datalists)

A site is written into a temporary folder beside its target and renamed into place only when complete,
so a failed or interrupted run never leaves a half-written site and never touches an earlier good one.
Output depends only on the release files, the options and the seed (no timestamps, sorted JSON), so
re-running gives byte-identical files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedfms.core.io import staged_directory, write_json_atomic
from fedfms.data.preparation import Case, CaseExcluded, DataError, Preparer, RawCase, get_preparer, read_error
from fedfms.transforms.labels import LabelToChannelsd
from fedfms.transforms.volume import SliceVolumed, volume_percentile_normalize

logger = logging.getLogger(__name__)

DEFAULT_SEED = 1337  # the reference code's seed
VAL_FRACTION = 0.1


@dataclass
class Sample:
    """One 2D sample ready to save: image (C, H, W), label (L, H, W) uint8, slice index or None."""

    image: np.ndarray
    label: np.ndarray
    slice: int | None


@dataclass
class SiteSummary:
    site: str
    num_volumes: int
    num_slices: int
    num_training: int
    num_validation: int
    skipped: list[dict] = field(default_factory=list)


def _rel(source: str, src: Path) -> str:
    """Source relative to the release root when it lies inside it (keeps metadata independent of where
    the release copy lives); other sources are kept as given."""
    for root in (str(src), str(src.resolve())):
        root = root.rstrip(os.sep)
        if source.startswith(root + os.sep):
            return source[len(root) + 1:]
    return source


def process_case(case: Case) -> tuple[list[Sample], dict]:
    """Load, validate and convert one case -> (its 2D samples, its volume metadata).

    Raises DataError naming the offending file for: unreadable files, shape mismatch, NaN/inf
    intensities, unknown label values, empty label (when the label map requires foreground),
    and images of an unexpected kind.
    """
    try:
        raw = case.load()
    except DataError:
        raise
    except Exception as exc:  # a reader failing on a bad file: report the file, not a traceback
        raise read_error(case.image_source, exc) from exc
    if not isinstance(raw, RawCase):
        raise TypeError(f"{case.image_source}: loader returned {type(raw).__name__}, expected RawCase")
    image, label = np.asarray(raw.image), np.asarray(raw.label)
    volume = raw.slice_axis is not None
    spatial = image.shape if volume or image.ndim == 2 else image.shape[:2]
    if volume and image.ndim != 3:
        raise DataError(case.image_source, f"expected a 3D volume, got shape {image.shape}")
    if not volume and not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise DataError(case.image_source, f"expected a 2D image (H, W, 3) or (H, W), got shape {image.shape}")
    if not volume and image.dtype != np.uint8:
        raise DataError(case.image_source, f"expected a uint8 image, got {image.dtype}")
    if label.shape != spatial:
        raise DataError(
            case.label_source,
            f"label shape {label.shape} does not match image shape {image.shape} of {case.image_source}",
        )
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise DataError(case.image_source, f"expected real-valued intensities, got {image.dtype}")
    if not np.isfinite(image).all():
        raise DataError(case.image_source, f"{int((~np.isfinite(image)).sum())} NaN or infinite intensities")
    try:
        data = LabelToChannelsd("label", case.label_map)({"label": label})
    except ValueError as exc:
        raise DataError(case.label_source, str(exc).removeprefix("'label': ")) from None
    if case.label_map.require_foreground and not data["label"].any():
        raise DataError(case.label_source, f"empty label (no {' / '.join(case.label_map.names)} foreground)")

    meta = {
        "shape": list(image.shape),
        "affine": None if raw.affine is None else np.asarray(raw.affine, dtype=float).round(6).tolist(),
        "slice_axis": raw.slice_axis,
    }
    if not volume:
        image = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
        return [Sample(np.ascontiguousarray(image), data["label"], None)], meta
    data["image"] = image[None].astype(np.float32)
    data = volume_percentile_normalize("image")(data)
    slicer = SliceVolumed(
        ["image", "label"],
        axis=raw.slice_axis,
        label_key="label" if case.empty_slice_stride else None,
        empty_slice_stride=case.empty_slice_stride,
    )
    samples = [
        Sample(np.asarray(s["image"], dtype=np.float16), np.asarray(s["label"], dtype=np.uint8), s["slice"])
        for s in slicer(data)
    ]
    return samples, meta


def split_groups(groups: Iterable[str], seed: int = DEFAULT_SEED, val_fraction: float = VAL_FRACTION) -> set[str]:
    """Pick the validation groups (volumes / patients): round(n * val_fraction), at least 1 if n >= 2.

    Depends only on the set of groups and the seed (sorted before shuffling), never on slices.
    """
    unique = sorted(set(groups))
    n_val = max(1, round(len(unique) * val_fraction)) if len(unique) >= 2 else 0
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i] for i in order[:n_val]}


def prepare_site(
    preparer: Preparer,
    src: Path,
    out: Path,
    site: str,
    *,
    seed: int = DEFAULT_SEED,
    skip_bad: bool = False,
    synthetic: bool = False,
    source_release: str | None = None,
    options: dict | None = None,
) -> SiteSummary:
    """Prepare one site into ``out/<dataset>/<site>`` (see module docstring). Returns its summary.

    ``site`` is a canonical name (see Preparer.resolve_sites). Without ``skip_bad`` the first bad case
    raises DataError (with ``case`` set) and nothing is written for the site; cases left out by an
    option (CaseExcluded) are always skipped and listed in ``metadata.skipped``.
    """
    src, out = Path(src), Path(out)
    cases = list(preparer.iter_cases(src, site, **(options or {})))
    if not cases:
        raise DataError(src, f"no cases found for {preparer.name} site {site!r} (the expected release layout "
                             f"is shown by: python tools/prepare_data.py {preparer.name} --help)")
    duplicates = sorted(i for i, n in Counter(c.case_id for c in cases).items() if n > 1)
    if duplicates:
        raise DataError(src, f"duplicate case ids in site {site!r}: {duplicates}")
    channels = cases[0].label_map.names
    if len(channels) != len(preparer.label_channels):  # the networks' num_classes comes from the preparer
        raise ValueError(f"{type(preparer).__name__} declares {len(preparer.label_channels)} label channels "
                         f"{preparer.label_channels}, its cases produce {channels}")
    dataset_dir = out / preparer.name
    with staged_directory(dataset_dir / site) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        entries: list[dict] = []
        volumes: dict[str, dict] = {}
        groups: dict[str, str] = {}
        skipped: list[dict] = []
        for case in tqdm(cases, desc=f"{preparer.name}/{site}", unit="case", leave=False):
            try:
                samples, meta = process_case(case)
            except DataError as exc:
                exc.case = case.case_id
                if not (skip_bad or isinstance(exc, CaseExcluded)):
                    raise
                logger.info("skipping %s/%s: %s", site, case.case_id, exc)
                skipped.append({"case": case.case_id, "source": _rel(exc.source, src), "problem": exc.problem})
                continue
            volumes[case.case_id] = {"source": _rel(case.image_source, src), **meta}
            groups[case.case_id] = case.split_group
            for s in samples:
                stem = case.case_id if s.slice is None else f"{case.case_id}_s{s.slice:03d}"
                np.save(tmp / "images" / f"{stem}.npy", s.image)
                np.save(tmp / "labels" / f"{stem}.npy", s.label)
                entries.append({"image": f"images/{stem}.npy", "label": f"labels/{stem}.npy",
                                "volume": case.case_id, "slice": s.slice})
        if not volumes:
            raise DataError(src, f"no valid cases left in {preparer.name} site {site!r} (all {len(cases)} skipped)")
        val_groups = split_groups(groups.values(), seed)
        validation = [e for e in entries if groups[e["volume"]] in val_groups]
        training = [e for e in entries if groups[e["volume"]] not in val_groups]
        metadata = {
            "site": site,
            "dataset": preparer.name,
            "num_volumes": len(volumes),
            "num_slices": len(entries),
            "label_channels": list(channels),
            "synthetic": synthetic,
            "source_release": source_release or preparer.source_release,
            "volumes": volumes,
            "skipped": skipped,
            "split": {"seed": seed, "validation_fraction": VAL_FRACTION, "by": "volume" if all(
                g == v for v, g in groups.items()) else "patient", "validation_groups": sorted(val_groups)},
            "options": {k: v for k, v in sorted((options or {}).items())},
        }
        write_json_atomic(tmp / "datalist.json",
                          {"training": training, "validation": validation, "test": entries, "metadata": metadata},
                          indent=1, sort_keys=True)
    return SiteSummary(site, len(volumes), len(entries), len(training), len(validation), skipped)


def write_dataset_index(dataset_dir: Path) -> dict:
    """(Re)write dataset_dir/dataset.json from every site's datalist.json there; returns it."""
    sites = {}
    for datalist in sorted(dataset_dir.glob("*/datalist.json")):
        if datalist.parent.name.startswith("."):  # a temp folder left by a killed run is not a site
            continue
        d = json.loads(datalist.read_text())
        m = d["metadata"]
        sites[m["site"]] = {"datalist": f"{datalist.parent.name}/datalist.json", "num_volumes": m["num_volumes"],
                            "num_samples": m["num_slices"], "num_training": len(d["training"]),
                            "num_validation": len(d["validation"]), "synthetic": m["synthetic"]}
    index = {"dataset": dataset_dir.name, "sites": sites}
    write_json_atomic(dataset_dir / "dataset.json", index, indent=1, sort_keys=True)
    return index


def prepare_dataset(
    name: str,
    src: str | Path,
    out: str | Path,
    sites: Sequence[str] | None = None,
    *,
    seed: int = DEFAULT_SEED,
    skip_bad: bool = False,
    synthetic: bool = False,
    source_release: str | None = None,
    options: dict | None = None,
) -> list[SiteSummary]:
    """Prepare the given (default: all) sites of a registered dataset; dataset.json is rewritten after each.

    Site names are checked first (SiteError before anything is written). Sites are done in order; if
    one fails, the sites completed before it stay written (each is complete on its own), the failing
    and later ones are untouched, and the error propagates (a DataError carries the failing ``site``).
    """
    preparer = get_preparer(name)
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(src, "is a file, expected the release folder" if src.exists() else "release folder not found")
    summaries = []
    for site in tqdm(preparer.resolve_sites(sites, src, options), desc=name, unit="site"):
        try:
            summaries.append(prepare_site(preparer, src, out, site, seed=seed, skip_bad=skip_bad,
                                          synthetic=synthetic, source_release=source_release, options=options))
        except DataError as exc:
            exc.site = site
            raise
        finally:  # after every site, so the index matches the site folders even if a later site is killed
            if (out / name).is_dir():
                write_dataset_index(out / name)
    return summaries


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM / SIGHUP into SystemExit while the block runs (main thread only).

    Python's default action for these signals ends the process at once, skipping the cleanup that
    removes a half-written temporary site folder; as an exception, they run it like Ctrl-C does.
    """
    signals = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]

    def exit_(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, exit_) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def format_summary(dataset: str, summaries: Sequence[SiteSummary]) -> str:
    """A plain-text table: one row per site plus the skipped cases, if any."""
    header = ("site", "volumes", "samples", "train", "val", "skipped")
    rows = [(s.site, s.num_volumes, s.num_slices, s.num_training, s.num_validation, len(s.skipped)) for s in summaries]
    rows.append(("total", *(sum(r[i] for r in rows) for i in range(1, 6))))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(6)]
    lines = [f"{dataset}:", "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    lines += [f"skipped {s.site}/{b['case']}: {b['source']}: {b['problem']}" for s in summaries for b in s.skipped]
    return "\n".join(lines)
