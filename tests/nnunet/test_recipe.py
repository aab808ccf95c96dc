"""The nnU-Net pieces fedfms plugs into MONAI: labels and regions, the trainer's recipe (including the
nnU-Net internals relied on, which fail here first if nnunetv2 changes), batches, normalization,
inference."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from fedfms.nnunet import (NnUNetInferer, NnUNetNormalized, NnUNetRecipe, build_network, channel_logits,
                           channels_to_label_map, make_plan, nnunet_labels, training_loader)
from fedfms.nnunet.labels import regions_class_order


@pytest.fixture(scope="module")
def recipe(plan, tmp_path_factory) -> NnUNetRecipe:
    return NnUNetRecipe(plan, "cpu", str(tmp_path_factory.mktemp("log")), num_epochs=10)


@pytest.fixture(scope="module")
def region_plan(merged_fingerprint) -> dict:
    """A plan for two overlapping label channels (fundus-like OD, OC): nnU-Net region training."""
    return make_plan({**copy.deepcopy(merged_fingerprint), "label_channels": ["OD", "OC"]})


@pytest.mark.parametrize("names", [["OD", "OC"], ["a", "b", "c"]])
def test_label_channels_survive_nnunet_region_conversion(names):
    rng = np.random.default_rng(0)
    channels = (rng.random((len(names), 12, 10)) < 0.4).astype(np.uint8)  # overlapping on purpose
    channels[1] |= channels[0]  # and nested, as the optic cup in the disc
    labels = nnunet_labels(names)
    manager = LabelManager(labels, regions_class_order(names))
    assert manager.has_regions and manager.num_segmentation_heads == len(names)
    label_map = channels_to_label_map(torch.from_numpy(channels))
    assert label_map.dtype == torch.int16 and label_map.shape == (1, 12, 10)
    regions = ConvertSegmentationToRegionsTransform(manager.foreground_regions, channel_in_seg=0)
    back = regions(image=torch.zeros(1, 12, 10), segmentation=label_map)["segmentation"]
    np.testing.assert_array_equal(back.numpy(), channels)
    np.testing.assert_array_equal(channels_to_label_map(channels), label_map.numpy())


def test_one_channel_is_nnunet_binary_softmax_and_logit_is_fg_minus_bg():
    manager = LabelManager(nnunet_labels(["prostate"]), None)
    assert not manager.has_regions and manager.num_segmentation_heads == 2
    out = torch.randn(3, 2, 5, 5)
    np.testing.assert_allclose(torch.sigmoid(channel_logits(out, False))[:, 0], torch.softmax(out, 1)[:, 1], atol=1e-6)
    assert channel_logits(out, True) is out
    with pytest.raises(ValueError, match="binary softmax pair"):
        channel_logits(torch.randn(1, 3, 4, 4), False)


def test_recipe_is_nnunets(recipe, plan):
    network = build_network(plan)
    optimizer = recipe.optimizer(network)
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (1e-2, 0.99, True, 3e-5)
    loss = recipe.loss(network)
    assert isinstance(loss, DeepSupervisionWrapper) and isinstance(loss.loss, DC_and_CE_loss)
    stages = plan["plans"]["configurations"]["2d"]["architecture"]["arch_kwargs"]["n_stages"]
    weights = np.array([1 / 2**i for i in range(stages - 1)])
    weights[-1] = 0
    np.testing.assert_allclose(loss.weight_factors, weights / weights.sum())
    scheduler = recipe.lr_scheduler(network)
    assert recipe.optimizer(network) is optimizer and recipe.lr_scheduler(network) is scheduler  # built once
    for epoch in (0, 3, 9):
        scheduler.step(epoch)
        assert group["lr"] == pytest.approx(1e-2 * (1 - epoch / 10) ** 0.9)
    assert not any(k.startswith("_orig_mod") for k in network.state_dict())  # not torch.compile'd


def test_recipe_overrides_and_regions(region_plan, tmp_path):
    recipe = NnUNetRecipe(region_plan, "cpu", str(tmp_path), num_epochs=5, initial_lr=0.1)
    network = build_network(region_plan)
    assert recipe.optimizer(network).param_groups[0]["lr"] == 0.1
    assert isinstance(recipe.loss(network).loss, DC_and_BCE_loss)
    names = [type(t).__name__ for t in recipe.training_transforms().transforms]
    assert "ConvertSegmentationToRegionsTransform" in names and names[-1] == "DownsampleSegForDSTransform"
    with pytest.raises(ValueError, match="not an nnunetv2 trainer"):
        NnUNetRecipe(region_plan, "cpu", str(tmp_path), trainer="NoSuchTrainer")
    with pytest.raises(ValueError, match="always trains on cuda:0; choose the GPU with CUDA_VISIBLE_DEVICES=1"):
        NnUNetRecipe(region_plan, "cuda:1", str(tmp_path))


def test_training_batches_and_one_step(recipe, plan, two_sites, frame_size):
    config = plan["plans"]["configurations"]["2d"]
    loader = training_loader(recipe, two_sites["UCL"], frame_size, batch_size=3)
    batch = next(loader)
    patch = config["patch_size"]
    assert batch["data"].shape == (3, 1, *patch)
    stages = config["architecture"]["arch_kwargs"]["n_stages"]
    assert [tuple(t.shape) for t in batch["target"]] == [(3, 1, patch[0] // 2**i, patch[1] // 2**i) for i in range(stages - 1)]
    assert set(torch.unique(batch["target"][0]).tolist()) <= {0, 1}
    network = build_network(plan)
    recipe.optimizer(network)
    before = copy.deepcopy(network.state_dict())
    out = recipe.train_step(None, batch)
    assert len(out) == 1 and out[0]["loss"].ndim == 0 and torch.isfinite(out[0]["loss"])
    assert any(not torch.equal(before[k], v) for k, v in network.state_dict().items())


def test_normalization_is_nnunets_zscore_on_the_nonzero_crop(plan):
    rng = np.random.default_rng(1)
    image = np.zeros((1, 32, 32), np.float32)
    image[:, 4:30, 2:25] = rng.random((1, 26, 23)) + 0.1
    out = NnUNetNormalized("image", plan)({"image": torch.from_numpy(image)})["image"]
    crop = image[0, 4:30, 2:25]
    expected = np.zeros_like(image)
    expected[0, 4:30, 2:25] = (crop - crop.mean()) / crop.std()
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("mirroring", [False, True])
def test_inferer_is_nnunets_sliding_window_with_per_channel_logits(recipe, plan, frame_size, mirroring):
    torch.manual_seed(0)
    network = build_network(plan).eval()
    images = torch.randn(2, 1, frame_size, frame_size)
    logits = NnUNetInferer(recipe, use_mirroring=mirroring)(images, network)
    assert logits.shape == (2, 1, frame_size, frame_size) and logits.dtype == torch.float32
    assert network.decoder.deep_supervision  # restored after inference
    assert plan["plans"]["configurations"]["2d"]["patch_size"] == [frame_size, frame_size]  # one tile: compare directly
    network.decoder.deep_supervision = False
    with torch.no_grad():
        flips = [()] + [c for i in (1, 2) for c in itertools.combinations((2, 3), i)] if mirroring else [()]
        raw = torch.stack([torch.flip(network(torch.flip(images, f)), f) for f in flips]).mean(0)
    network.decoder.deep_supervision = True
    # nnU-Net accumulates Gaussian-weighted logits in float16: a few corner pixels (tiny weights) lose digits
    difference = (logits - (raw[:, 1:2] - raw[:, 0:1])).abs()
    assert difference.max() < 5e-2 and difference.median() < 5e-3


def test_training_loader_with_nnunet_worker_processes(recipe, two_sites, frame_size):
    """num_workers > 0: nnU-Net's NonDetMultiThreadedAugmenter (the bundle's default of 2)."""
    loader = training_loader(recipe, two_sites["HK"], frame_size, batch_size=2, num_workers=2)
    try:
        batches = [next(loader) for _ in range(3)]
    finally:
        loader._finish()  # batchgenerators' shutdown of its worker processes
    assert all(b["data"].shape[:2] == (2, 1) for b in batches)
