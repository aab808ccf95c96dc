"""Transforms: volume normalization (numerically), slicing, label mapping, the bundle input chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedfms.transforms import (
    LabelMap,
    LabelToChannelsd,
    ScaleToUnitd,
    SliceVolumed,
    ToThreeChannelsd,
    sample_transforms,
    volume_percentile_normalize,
)


def test_percentile_normalization_known_volume():
    # 1000 voxels with values -50, -49, ..., 949: min = -50; 99th percentile (linear) = -50 + 0.99 * 999
    volume = (np.arange(1000, dtype=np.float32) - 50).reshape(1, 10, 10, 10)
    p99 = -50 + 0.99 * 999  # 939.01
    out = np.asarray(volume_percentile_normalize("image")({"image": volume})["image"])
    expected = np.clip((volume - (-50)) / (p99 - (-50)), 0, 1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert out.min() == 0 and out.max() == 1
    assert (out == 1).sum() == 10  # values above the 99th percentile (940..949) are clipped
    np.testing.assert_allclose(out.reshape(-1)[100], 100 / 989.01, atol=1e-6)


def test_normalization_uses_whole_volume_statistics():
    # the same slice gets different values in two volumes whose *other* slices differ
    a = np.zeros((1, 4, 4, 3), np.float32)
    a[..., 0] = 1.0
    b = a.copy()
    b[..., 2] = 10.0
    na = np.asarray(volume_percentile_normalize()({"image": a})["image"])
    nb = np.asarray(volume_percentile_normalize()({"image": b})["image"])
    assert na[..., 0].max() == pytest.approx(1.0)
    assert nb[..., 0].max() == pytest.approx(0.1, abs=1e-6)


def test_slice_volume_keeps_ids_and_indices():
    image = np.random.default_rng(0).random((1, 5, 6, 4)).astype(np.float32)
    label = np.zeros((1, 5, 6, 4), np.uint8)
    label[0, 1:3, 1:3, 2] = 1
    samples = SliceVolumed(["image", "label"], axis=2)({"image": image, "label": label, "volume": "Case07"})
    assert [s["slice"] for s in samples] == [0, 1, 2, 3]
    assert all(s["volume"] == "Case07" and s["image"].shape == (1, 5, 6) for s in samples)
    np.testing.assert_array_equal(samples[2]["image"], image[..., 2])
    along0 = SliceVolumed("image", axis=0)({"image": image})
    assert len(along0) == 5 and along0[3]["image"].shape == (1, 6, 4)


def test_slice_selection_foreground_plus_every_kth_empty():
    label = np.zeros((1, 4, 4, 12), np.uint8)
    label[..., [3, 4, 7]] = 1
    samples = SliceVolumed(["label"], label_key="label", empty_slice_stride=5)({"label": label})
    assert [s["slice"] for s in samples] == [0, 3, 4, 5, 7, 10]


def test_slice_volume_rejects_bad_input():
    with pytest.raises(ValueError, match="channel-first 3D"):
        SliceVolumed("image")({"image": np.zeros((4, 4, 4))})
    with pytest.raises(ValueError, match="differ in depth"):
        SliceVolumed(["image", "label"])({"image": np.zeros((1, 4, 4, 4)), "label": np.zeros((1, 4, 4, 5))})


def test_label_map_channels_and_validation():
    raw = np.array([[0, 1, 2], [4, 4, 0]])
    assert LabelMap({"fg": None})(raw).tolist() == [[[0, 1, 1], [1, 1, 0]]]
    both = LabelMap({"ET": (4,), "TC": (1, 4)}, allowed=(0, 1, 2, 4))(raw)
    assert both.dtype == np.uint8 and both.shape == (2, 2, 3)
    assert both[0].tolist() == [[0, 0, 0], [1, 1, 0]] and both[1].tolist() == [[0, 1, 0], [1, 1, 0]]
    with pytest.raises(ValueError, match=r"unknown label values \[3\]"):
        LabelMap({"ET": (4,)}, allowed=(0, 1, 2, 4))(np.array([0, 3, 4]))
    with pytest.raises(ValueError, match="unknown label values"):
        LabelMap({"fg": None})(np.array([0.0, 0.5]))
    with pytest.raises(ValueError, match="'label'"):
        LabelToChannelsd("label", LabelMap({"fg": None}))({"label": np.array([-1, 0])})


def test_scale_to_unit_and_three_channels():
    rgb = np.full((3, 2, 2), 255, np.uint8)
    out = ScaleToUnitd("image")({"image": rgb})["image"]
    assert out.dtype == torch.float32 and float(out.max()) == 1.0
    gray = np.full((1, 2, 2), 0.5, np.float16)
    out = ToThreeChannelsd("image")(ScaleToUnitd("image")({"image": gray}))["image"]
    assert out.shape == (3, 2, 2) and torch.allclose(out[2], torch.full((2, 2), 0.5))
    assert ToThreeChannelsd("image")({"image": torch.zeros(3, 2, 2)})["image"].shape == (3, 2, 2)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        ScaleToUnitd("image")({"image": np.full((1, 2, 2), 3.0, np.float32)})
    with pytest.raises(ValueError, match="expected uint8 or float"):
        ScaleToUnitd("image")({"image": np.zeros((1, 2, 2), np.int32)})
    with pytest.raises(ValueError, match="expected 1 or 3 channels"):
        ToThreeChannelsd("image")({"image": np.zeros((2, 2, 2), np.float32)})


@pytest.mark.parametrize("channels,dtype,label_channels", [(1, np.float16, 1), (3, np.uint8, 2)])
def test_sample_chain_shapes_dtypes_ranges(tmp_path, channels, dtype, label_channels):
    rng = np.random.default_rng(1)
    image = rng.random((channels, 40, 52))
    image = (image * 255).astype(np.uint8) if dtype == np.uint8 else image.astype(np.float16)
    label = np.zeros((label_channels, 40, 52), np.uint8)
    label[:, 10:30, 12:40] = 1
    np.save(tmp_path / "i.npy", image)
    np.save(tmp_path / "l.npy", label)
    entry = {"image": str(tmp_path / "i.npy"), "label": str(tmp_path / "l.npy"), "volume": "v", "slice": None}
    out = sample_transforms(image_size=64)(entry)
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
    assert 0 <= float(out["image"].min()) and float(out["image"].max()) <= 1
    assert out["label"].shape == (label_channels, 16, 16) and out["label"].dtype == torch.float32
    assert set(out["label"].unique().tolist()) == {0.0, 1.0}
    assert out["slice"] == -1 and out["volume"] == "v"
    # nearest-exact keeps the box centred: rows 10..29 of 40 -> 4..11 of 16
    assert out["label"][0, :, 8].nonzero().flatten().tolist() == list(range(4, 12))
    with pytest.raises(ValueError, match="multiple of"):
        sample_transforms(image_size=66)
