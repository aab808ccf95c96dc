"""Merging site fingerprints: hand-computed weighting, exactness of what can be exact, refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fedfms.nnunet import FingerprintError, merge_fingerprints
from fedfms.nnunet.fingerprint import FORMAT, intensity_statistics


def _site(name: str, shapes: list[list[int]], relative: list[float], foreground_cases: int, stats: dict | None) -> dict:
    """A hand-written site fingerprint (numbers chosen for hand computation)."""
    return {
        "format": FORMAT, "site": name, "split": "training", "image_size": 64, "num_image_channels": 1,
        "label_channels": ["prostate"], "num_cases": len(shapes), "num_foreground_cases": foreground_cases,
        "samples_per_case": 10000, "spacings": [[999.0, 1.0, 1.0]] * len(shapes), "shapes_after_crop": shapes,
        "relative_sizes_after_cropping": relative, "median_relative_size_after_cropping": float(np.median(relative)),
        "foreground_intensity_properties_per_channel": {"0": stats},
    }


A = _site("A", [[1, 60, 50], [1, 64, 64], [1, 40, 40]], [0.73, 1.0, 0.39], 2,
          {"mean": 1.0, "median": 0.9, "std": 0.5, "min": 0.1, "max": 2.0, "percentile_99_5": 1.9, "percentile_00_5": 0.2})
B = _site("B", [[1, 32, 48]], [0.375], 1,
          {"mean": 4.0, "median": 3.0, "std": 1.0, "min": 2.5, "max": 6.0, "percentile_99_5": 5.5, "percentile_00_5": 2.6})


def test_merge_weights_by_cases_with_foreground():
    merged = merge_fingerprints([A, B])
    stats = merged["foreground_intensity_properties_per_channel"]["0"]
    # weights 2 : 1 (cases with foreground); by hand:
    assert stats["mean"] == pytest.approx((2 * 1.0 + 4.0) / 3)                      # 2.0
    assert stats["std"] == pytest.approx(np.sqrt((2 * (0.25 + 1) + (1 + 16)) / 3 - 4))  # sqrt(2.5)
    assert stats["median"] == pytest.approx((2 * 0.9 + 3.0) / 3)                    # 1.6
    assert stats["percentile_99_5"] == pytest.approx((2 * 1.9 + 5.5) / 3)
    assert stats["percentile_00_5"] == pytest.approx((2 * 0.2 + 2.6) / 3)
    assert (stats["min"], stats["max"]) == (0.1, 6.0)
    assert merged["shapes_after_crop"] == [[1, 60, 50], [1, 64, 64], [1, 40, 40], [1, 32, 48]]
    assert merged["spacings"] == [[999.0, 1.0, 1.0]] * 4
    assert merged["median_relative_size_after_cropping"] == pytest.approx((0.39 + 0.73) / 2)
    assert (merged["num_cases"], merged["num_foreground_cases"], merged["sites"]) == (4, 3, {"A": 3, "B": 1})


def test_site_without_foreground_does_not_weigh_in():
    empty = _site("C", [[1, 64, 64]] * 5, [1.0] * 5, 0, None)
    merged = merge_fingerprints([A, empty])
    assert merged["foreground_intensity_properties_per_channel"] == A["foreground_intensity_properties_per_channel"]
    assert merged["num_cases"] == 8
    assert merge_fingerprints([empty])["foreground_intensity_properties_per_channel"] == {"0": None}


def test_mean_std_min_max_equal_those_of_the_pooled_samples():
    """With the same number of samples per case, the exact statistics equal nnU-Net's reduction of the
    pooled samples; the percentiles are approximations (weighted means) and are not checked here."""
    rng = np.random.default_rng(0)
    per_case = 1000
    a, b = rng.normal(0.3, 0.05, 3 * per_case), rng.gamma(2.0, 0.1, 5 * per_case)
    sites = [_site("A", [[1, 8, 8]] * 3, [1.0] * 3, 3, intensity_statistics(a)),
             _site("B", [[1, 8, 8]] * 5, [1.0] * 5, 5, intensity_statistics(b))]
    merged = merge_fingerprints(sites)["foreground_intensity_properties_per_channel"]["0"]
    pooled = intensity_statistics(np.concatenate([a, b]))
    for key in ("mean", "std", "min", "max"):
        assert merged[key] == pytest.approx(pooled[key], rel=1e-12), key


def test_merge_of_real_sites(site_fingerprints, merged_fingerprint):
    ucl, hk = site_fingerprints["UCL"], site_fingerprints["HK"]
    assert merged_fingerprint["shapes_after_crop"] == ucl["shapes_after_crop"] + hk["shapes_after_crop"]
    assert merged_fingerprint["sites"] == {"UCL": 6, "HK": 6}


@pytest.mark.parametrize("key, value, message", [
    ("image_size", 32, "disagree on image_size"),
    ("num_image_channels", 3, "disagree on num_image_channels|one entry per image channel"),
    ("label_channels", ["OD", "OC"], "disagree on label_channels"),
    ("site", "A", "fingerprinted twice"),
])
def test_merge_refuses_sites_that_cannot_share_a_plan(key, value, message):
    other = copy.deepcopy(B)
    other[key] = value
    with pytest.raises(FingerprintError, match=message):
        merge_fingerprints([A, other])


def test_merge_refuses_nothing_and_malformed():
    with pytest.raises(FingerprintError, match="no site fingerprint"):
        merge_fingerprints([])
    with pytest.raises(FingerprintError, match="shapes_after_crop"):
        merge_fingerprints([A, {**B, "shapes_after_crop": [[1, 2]]}])
