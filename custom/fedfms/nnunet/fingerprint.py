"""nnU-Net's dataset fingerprint of ONE site, computed from its prepared datalist, and the check that a
fingerprint holds only aggregate numbers (what may leave a site).

Per case (one 2D sample of the split) nnU-Net's own DatasetFingerprintExtractor.analyze_case runs:
crop to the non-zero region, sample foreground intensities (seeded, with replacement), shape after
cropping, spacing, relative size after cropping. The site-level reduction is nnU-Net's
DatasetFingerprintExtractor.run() reduction (percentiles 0.5 / 50 / 99.5, mean, std, min, max of the
pooled foreground samples; median relative size), done here because run() reads and writes
nnU-Net's raw / preprocessed folders and keeps every sampled intensity in memory.

Differences from nnU-Net's extractor, all deliberate:
- foreground samples per case: min(10000, 1e7 // cases) (nnU-Net: 1e8 // cases for the whole dataset),
  so a site holds at most 1e7 samples per channel; cases run in this process (nnU-Net: a spawn pool).
- per-case relative sizes after cropping are kept (nnU-Net keeps only their median) so that merging
  sites gives the exact pooled median; per-case shapes and spacings are kept as nnU-Net keeps them.
- bookkeeping for merging: site, number of cases, cases with foreground, samples per case, image size,
  image channels, label channels.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from tqdm import tqdm

from fedfms.bundle.datalist import load_datalist, load_metadata
from fedfms.nnunet.reader import PreparedSampleIO

logger = logging.getLogger(__name__)

FORMAT = "fedfms-nnunet-fingerprint/1"
MAX_SAMPLES_PER_CASE = 10000  # nnU-Net's analyze_case default
MAX_SAMPLES_PER_SITE = 10_000_000
PERCENTILES = (0.5, 50.0, 99.5)
INTENSITY_KEYS = ("mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5")


class FingerprintError(ValueError):
    """A site's fingerprint cannot be computed (empty split, unreadable sample) or is malformed."""


def samples_per_case(num_cases: int) -> int:
    """Foreground intensities sampled per case: nnU-Net's budget rule (total // cases), capped."""
    return max(1, min(MAX_SAMPLES_PER_CASE, MAX_SAMPLES_PER_SITE // max(num_cases, 1)))


def intensity_statistics(samples: np.ndarray) -> dict[str, float]:
    """nnU-Net's per-channel foreground statistics of pooled samples (DatasetFingerprintExtractor.run)."""
    p00_5, median, p99_5 = np.percentile(samples, PERCENTILES)
    return {
        "mean": float(np.mean(samples)), "median": float(median), "std": float(np.std(samples)),
        "min": float(np.min(samples)), "max": float(np.max(samples)),
        "percentile_99_5": float(p99_5), "percentile_00_5": float(p00_5),
    }


def site_fingerprint(datalist: str | os.PathLike, image_size: int = 256, split: str = "training",
                     progress: bool = True) -> dict[str, Any]:
    """Fingerprint of one site's `split` (default: the samples it trains on) in the image_size frame.

    Returns a JSON-serialisable dict with nnU-Net's fingerprint keys ("spacings", "shapes_after_crop",
    "foreground_intensity_properties_per_channel", "median_relative_size_after_cropping") plus the
    bookkeeping above; it passes check_fingerprint. Raises FingerprintError naming the site and the
    datalist (empty split) or the sample file (unreadable, wrong channels).
    """
    datalist = os.fspath(datalist)
    try:
        (site, meta), = load_metadata(datalist).items()
        cases = load_datalist(datalist, split)
    except (OSError, ValueError) as err:
        raise FingerprintError(f"cannot fingerprint datalist {datalist}: {err}") from err
    if not cases:
        raise FingerprintError(f"site {site}: the {split!r} split of {datalist} is empty, nothing to fingerprint")
    per_case = samples_per_case(len(cases))
    reader = functools.partial(PreparedSampleIO, image_size=image_size)
    shapes, spacings, relative, pooled, channels, with_fg = [], [], [], None, None, 0
    for case in tqdm(cases, desc=f"nnU-Net fingerprint {site}", disable=not progress, unit="sample"):
        try:
            shape, spacing, intensities, _, rel = DatasetFingerprintExtractor.analyze_case(
                [case["image"]], case["label"], reader, num_samples=per_case)
        except Exception as err:
            raise FingerprintError(f"site {site}: sample {case['image']} (label {case['label']}): {err}") from err
        if channels is None:
            channels, pooled = len(intensities), [[] for _ in intensities]
        elif len(intensities) != channels:
            raise FingerprintError(f"site {site}: {case['image']} has {len(intensities)} image channels, "
                                   f"earlier samples {channels}")
        if len(intensities[0]):
            with_fg += 1
            for c, values in enumerate(intensities):
                pooled[c].append(np.asarray(values, dtype=np.float64))
        shapes.append([int(s) for s in shape])
        spacings.append([float(s) for s in spacing])
        relative.append(float(rel))
    stats = {str(c): intensity_statistics(np.concatenate(v)) if v else None for c, v in enumerate(pooled)}
    fingerprint = {
        "format": FORMAT,
        "site": str(site),
        "split": split,
        "image_size": int(image_size),
        "num_image_channels": int(channels),
        "label_channels": [str(c) for c in meta.get("label_channels", [])],
        "num_cases": len(cases),
        "num_foreground_cases": with_fg,
        "samples_per_case": per_case,
        "spacings": spacings,
        "shapes_after_crop": shapes,
        "relative_sizes_after_cropping": relative,
        "median_relative_size_after_cropping": float(np.median(relative)),
        "foreground_intensity_properties_per_channel": stats,
    }
    check_fingerprint(fingerprint)
    logger.info(f"nnU-Net fingerprint of site {site}: {len(cases)} {split} samples ({with_fg} with foreground), "
                f"median shape after crop {np.median(shapes, 0).tolist()}")
    return fingerprint


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _expect(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise FingerprintError(f"fingerprint{where}: expected {what}")


def check_fingerprint(fingerprint: Mapping[str, Any], source: str = "") -> None:
    """Raise FingerprintError unless `fingerprint` is exactly a site (or merged) fingerprint of aggregate
    numbers: the known keys only, each a plain JSON scalar or a list of num_cases per-case numbers
    (spacing, shape, relative size), intensity statistics as the 7 named numbers per image channel.
    Any other key, an array or tensor, bytes, a nested structure of another shape or a non-finite
    number fails: this is the audit of what a site sends besides the network weights."""
    where = f" {source}" if source else ""
    scalars = {"format": str, "site": str, "split": str, "image_size": int, "num_image_channels": int,
               "num_cases": int, "num_foreground_cases": int, "samples_per_case": int,
               "median_relative_size_after_cropping": float}
    lists = {"spacings", "shapes_after_crop", "relative_sizes_after_cropping"}
    allowed = {*scalars, *lists, "label_channels", "foreground_intensity_properties_per_channel", "sites"}
    _expect(isinstance(fingerprint, Mapping), where, f"a dict, got {type(fingerprint).__name__}")
    unknown, missing = set(fingerprint) - allowed, allowed - {"sites"} - set(fingerprint)
    _expect(not unknown and not missing, where, f"exactly the keys {sorted(allowed)}; unknown {sorted(unknown)}, "
                                                f"missing {sorted(missing)}")
    _expect(fingerprint["format"] == FORMAT, where, f"format {FORMAT!r}, got {fingerprint['format']!r}")
    for key, kind in scalars.items():
        value = fingerprint[key]
        ok = isinstance(value, str) if kind is str else (_number(value) and (kind is float or isinstance(value, int)))
        _expect(ok, f"{where}[{key!r}]", f"a {kind.__name__}, got {type(value).__name__}")
    n = fingerprint["num_cases"]
    _expect(n >= 1 and 0 <= fingerprint["num_foreground_cases"] <= n, where, f"1 <= num_cases, 0 <= foreground cases <= num_cases")
    for key, positive in (("spacings", "numbers > 0"), ("shapes_after_crop", "integers >= 1")):
        rows = fingerprint[key]
        _expect(isinstance(rows, list) and len(rows) == n and all(
            isinstance(r, list) and len(r) == 3 and all(_number(v) and v > 0 for v in r)
            and (key == "spacings" or all(isinstance(v, int) for v in r)) for r in rows),
            f"{where}[{key!r}]", f"{n} lists of 3 {positive} (one per case)")
    rel = fingerprint["relative_sizes_after_cropping"]
    _expect(isinstance(rel, list) and len(rel) == n and all(_number(v) for v in rel),
            f"{where}['relative_sizes_after_cropping']", f"{n} numbers (one per case)")
    labels = fingerprint["label_channels"]
    _expect(isinstance(labels, list) and labels and all(isinstance(v, str) for v in labels),
            f"{where}['label_channels']", "a non-empty list of channel names")
    stats = fingerprint["foreground_intensity_properties_per_channel"]
    channels = [str(c) for c in range(fingerprint["num_image_channels"])]
    _expect(isinstance(stats, Mapping) and sorted(stats) == channels, f"{where}[intensities]",
            f"one entry per image channel {channels}")
    for c, entry in stats.items():
        _expect(entry is None or (isinstance(entry, Mapping) and set(entry) == set(INTENSITY_KEYS)
                                  and all(_number(v) for v in entry.values())),
                f"{where}[intensities][{c!r}]", f"null (no foreground) or the numbers {list(INTENSITY_KEYS)}")
    if "sites" in fingerprint:
        sites = fingerprint["sites"]
        _expect(isinstance(sites, Mapping) and sites and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1 for k, v in sites.items())
            and sum(sites.values()) == n, f"{where}['sites']", "site name -> number of cases, summing to num_cases")
