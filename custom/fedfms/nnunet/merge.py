"""Merge the fingerprints of several sites into one, as if nnU-Net had fingerprinted the pooled cases.

What merges how (sites in the given order):
- exact: spacings, shapes_after_crop and relative sizes after cropping are per-case lists, concatenated;
  their median (median_relative_size_after_cropping) and everything nnU-Net's planner derives from them
  (target spacing, median shape, patch size) are therefore those of the pooled cases. Case counts add up.
- foreground intensity statistics per image channel, weighted by each site's number of cases with
  foreground (nnU-Net samples the same number of intensities from every such case, so a site weighs in
  with its cases): mean is the weighted mean (exact); std is the pooled standard deviation from the
  sites' means and variances (exact); min / max are the extremes (exact). median, percentile_00_5 and
  percentile_99_5 are the weighted means of the sites' values: percentiles of a pooled sample cannot be
  computed from summaries, so these three are approximations. Exactness of the first group assumes
  the sites sampled the same number of intensities per case (true up to 1000 cases per site;
  fedfms.nnunet.fingerprint.samples_per_case).
  nnU-Net uses these statistics only for CT normalization, which fedfms never selects (per-image
  z-score), so the approximations do not change training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedfms.nnunet.fingerprint import FORMAT, FingerprintError, check_fingerprint

MUST_AGREE = ("image_size", "num_image_channels", "label_channels")


def _merge_intensities(stats: Sequence[Mapping[str, float] | None], weights: Sequence[int]) -> dict[str, float] | None:
    pairs = [(s, w) for s, w in zip(stats, weights) if s is not None and w > 0]
    if not pairs:
        return None
    w = np.array([p[1] for p in pairs], dtype=np.float64)
    w /= w.sum()
    value = lambda key: np.array([p[0][key] for p in pairs], dtype=np.float64)  # noqa: E731
    mean = float(w @ value("mean"))
    second_moment = float(w @ (value("std") ** 2 + value("mean") ** 2))
    return {
        "mean": mean,
        "median": float(w @ value("median")),
        "std": float(np.sqrt(max(second_moment - mean**2, 0.0))),
        "min": float(value("min").min()),
        "max": float(value("max").max()),
        "percentile_99_5": float(w @ value("percentile_99_5")),
        "percentile_00_5": float(w @ value("percentile_00_5")),
    }


def merge_fingerprints(fingerprints: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One fingerprint for the pooled cases of `fingerprints` (site fingerprints, each passing
    check_fingerprint). Adds "sites": {site: num_cases}. Raises FingerprintError when none is given,
    a site appears twice, or the sites disagree on image size, image channels or label channels."""
    if not fingerprints:
        raise FingerprintError("no site fingerprint to merge")
    for fp in fingerprints:
        check_fingerprint(fp, source=f"of site {fp.get('site', '?')!r}" if isinstance(fp, Mapping) else "")
    names = [fp["site"] for fp in fingerprints]
    if len(set(names)) != len(names):
        raise FingerprintError(f"a site was fingerprinted twice: {names}")
    for key in MUST_AGREE:
        values = {name: fp[key] for name, fp in zip(names, fingerprints)}
        if len({repr(v) for v in values.values()}) != 1:
            raise FingerprintError(f"sites disagree on {key}, cannot plan one network for all: {values}")
    first = fingerprints[0]
    weights = [fp["num_foreground_cases"] for fp in fingerprints]
    relative = [r for fp in fingerprints for r in fp["relative_sizes_after_cropping"]]
    merged = {
        "format": FORMAT,
        "site": "+".join(names),
        "split": "+".join(sorted({fp["split"] for fp in fingerprints})),
        **{key: first[key] for key in MUST_AGREE},
        "num_cases": sum(fp["num_cases"] for fp in fingerprints),
        "num_foreground_cases": sum(weights),
        "samples_per_case": min(fp["samples_per_case"] for fp in fingerprints),
        "spacings": [s for fp in fingerprints for s in fp["spacings"]],
        "shapes_after_crop": [s for fp in fingerprints for s in fp["shapes_after_crop"]],
        "relative_sizes_after_cropping": relative,
        "median_relative_size_after_cropping": float(np.median(relative)),
        "foreground_intensity_properties_per_channel": {
            c: _merge_intensities([fp["foreground_intensity_properties_per_channel"][c] for fp in fingerprints], weights)
            for c in first["foreground_intensity_properties_per_channel"]
        },
        "sites": {name: fp["num_cases"] for name, fp in zip(names, fingerprints)},
    }
    check_fingerprint(merged, source="(merged)")
    return merged
