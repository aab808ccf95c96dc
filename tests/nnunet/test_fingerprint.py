"""A site's nnU-Net fingerprint against numbers computed independently (numpy / torch on the same
samples), and the aggregate-only check of what a site may send."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from fedfms.bundle.datalist import load_datalist
from fedfms.nnunet import FingerprintError, check_fingerprint, site_fingerprint


def _frame(sample: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (C, S, S) float32 in [0, 1] and foreground mask (S, S) of a prepared sample, computed here
    with numpy and torch: uint8 / 255 or float, bilinear (half-pixel centres) to S, label nearest-exact."""
    image = np.load(sample["image"])
    image = image.astype(np.float32) / 255 if image.dtype == np.uint8 else image.astype(np.float32)
    image = torch.nn.functional.interpolate(torch.from_numpy(image)[None], size=(size, size), mode="bilinear",
                                            align_corners=False)[0].numpy()
    label = np.load(sample["label"]).any(0)
    rows = np.floor((np.arange(size) + 0.5) * label.shape[0] / size).astype(int)
    cols = np.floor((np.arange(size) + 0.5) * label.shape[1] / size).astype(int)
    return image, label[np.ix_(rows, cols)]


def _weighted_quantile(values: list[np.ndarray], q: float) -> float:
    """Quantile of pooled per-case values where every case weighs the same (nnU-Net samples the same
    number of intensities from each case)."""
    pooled = np.concatenate(values)
    weights = np.concatenate([np.full(len(v), 1.0 / len(v)) for v in values])
    order = np.argsort(pooled)
    cdf = np.cumsum(weights[order]) / weights.sum()
    return float(pooled[order][np.searchsorted(cdf, q)])


def test_site_fingerprint_matches_independent_numbers(two_sites, site_fingerprints, frame_size):
    fp = site_fingerprints["UCL"]
    samples = load_datalist(two_sites["UCL"], "training")
    shapes, relative, foreground = [], [], []
    for sample in samples:
        image, mask = _frame(sample, frame_size)
        rows, cols = np.nonzero((image != 0).any(0))
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        shapes.append([1, rows.max() - rows.min() + 1, cols.max() - cols.min() + 1])
        relative.append(shapes[-1][1] * shapes[-1][2] / frame_size**2)
        inside = mask[box]
        if inside.any():
            foreground.append(image[0][box][inside].astype(np.float64))
    assert fp["site"] == "UCL" and fp["num_cases"] == len(samples) == 6 and fp["image_size"] == frame_size
    assert fp["num_image_channels"] == 1 and fp["label_channels"] == ["prostate"]
    assert fp["spacings"] == [[999.0, 1.0, 1.0]] * 6
    assert fp["shapes_after_crop"] == shapes
    np.testing.assert_allclose(fp["relative_sizes_after_cropping"], relative)
    assert fp["median_relative_size_after_cropping"] == pytest.approx(np.median(relative))
    assert fp["num_foreground_cases"] == len(foreground) >= 2, "the cut must hold slices with prostate"
    stats = fp["foreground_intensity_properties_per_channel"]["0"]
    everything = np.concatenate(foreground)
    # 10000 samples per case from at most 32 x 32 pixels: every pixel is drawn, extremes are exact
    assert stats["min"] == pytest.approx(everything.min(), abs=1e-6)
    assert stats["max"] == pytest.approx(everything.max(), abs=1e-6)
    case_mean = np.mean([v.mean() for v in foreground])
    sampling_error = 4 * everything.std() / np.sqrt(10000 * len(foreground))
    assert stats["mean"] == pytest.approx(case_mean, abs=sampling_error)
    for key, q in (("percentile_00_5", 0.005), ("median", 0.5), ("percentile_99_5", 0.995)):
        assert stats[key] == pytest.approx(_weighted_quantile(foreground, q), abs=0.02), key


def test_fingerprint_is_plain_json_and_passes_the_audit(site_fingerprints):
    fp = site_fingerprints["HK"]
    assert json.loads(json.dumps(fp)) == fp
    check_fingerprint(fp)


@pytest.mark.parametrize("tamper", [
    "array_in_statistics", "tensor_shapes", "extra_key_with_pixels", "pixels_in_relative_sizes", "nested_list_of_pixels",
    "bytes", "nan",
])
def test_audit_rejects_anything_but_aggregate_numbers(site_fingerprints, two_sites, tamper):
    fp = copy.deepcopy(site_fingerprints["HK"])
    pixels = np.load(load_datalist(two_sites["HK"], "training")[0]["image"])
    if tamper == "array_in_statistics":
        fp["foreground_intensity_properties_per_channel"]["0"]["mean"] = pixels
    elif tamper == "tensor_shapes":
        fp["shapes_after_crop"] = torch.tensor(fp["shapes_after_crop"])
    elif tamper == "extra_key_with_pixels":
        fp["pixels"] = pixels.tolist()
    elif tamper == "pixels_in_relative_sizes":
        fp["relative_sizes_after_cropping"] = pixels.ravel().astype(float).tolist()
    elif tamper == "nested_list_of_pixels":
        fp["spacings"][0] = pixels[0, :3].tolist()
    elif tamper == "bytes":
        fp["site"] = pixels.tobytes()
    else:
        fp["median_relative_size_after_cropping"] = float("nan")
    with pytest.raises(FingerprintError, match="fingerprint"):
        check_fingerprint(fp)


def test_empty_split_names_site_and_datalist(two_sites, tmp_path):
    content = json.loads(two_sites["HK"].read_text())
    content["training"] = []
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(content))
    with pytest.raises(FingerprintError, match=rf"site HK: the 'training' split of {path} is empty"):
        site_fingerprint(path, image_size=32, progress=False)


def test_unreadable_sample_names_site_and_file(two_sites, tmp_path):
    site = two_sites["HK"].parent
    content = json.loads(two_sites["HK"].read_text())
    for sample in content["training"]:
        sample.update(image=str(site / sample["image"]), label=str(site / sample["label"]))
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"not a numpy file")
    content["training"][1]["image"] = str(broken)
    (tmp_path / "datalist.json").write_text(json.dumps(content))
    with pytest.raises(FingerprintError, match=rf"site HK: sample {broken}.*cannot read prepared image {broken}"):
        site_fingerprint(tmp_path / "datalist.json", image_size=32, progress=False)
