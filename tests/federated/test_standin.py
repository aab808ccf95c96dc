"""The demo's stand-in SAM weights: official checkpoint layout, loads into both segmenters key for key,
deterministic, cached, written atomically (a few training steps only: the recipe, not its quality)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fedfms.core.io import load_tensors
from fedfms.networks import ENCODER_CONFIGS, MSASegmenter, SAMSegmenter, write_random_sam_checkpoint
from fedfms.orchestration import standin
from fedfms.orchestration.standin import CACHE_ENV, StandInRecipe, cache_dir, standin_checkpoint

TINY = StandInRecipe(model_type="vit_nano", image_size=64, steps=2, batch_size=2, seed=11)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, standin_checkpoint(TINY, cache=cache, progress=False)


def test_file_is_the_official_layout_and_loads_key_for_key(written, tmp_path):
    _, path = written
    state = load_tensors(path)
    # The official layout: exactly the keys (and shapes) of a SAM state dict, which the random-init
    # writer produces and tests/networks checks against segment_anything's builders.
    reference = load_tensors(write_random_sam_checkpoint(tmp_path / "random.pth", TINY.model_type, 0))
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    for cls in (MSASegmenter, SAMSegmenter):
        model = cls(model_type=TINY.model_type, image_size=64, checkpoint=path)
        own = model.state_dict()
        assert set(own) - set(state) == set(model.new_keys())
        assert all(torch.equal(own[k], v) for k, v in state.items())


def test_pretraining_changes_the_weights_it_trains(written, tmp_path):
    _, path = written
    state = load_tensors(path)
    with torch.random.fork_rng():
        torch.manual_seed(TINY.seed)
        initial = SAMSegmenter(model_type=TINY.model_type, image_size=64).state_dict()
    assert not torch.equal(state["image_encoder.patch_embed.proj.weight"], initial["image_encoder.patch_embed.proj.weight"])
    assert not torch.equal(state["mask_decoder.output_upscaling.0.weight"], initial["mask_decoder.output_upscaling.0.weight"])
    # never trained (no gradient in prompt-free decoding): kept at their seeded initial values
    assert torch.equal(state["mask_decoder.iou_prediction_head.layers.0.weight"], initial["mask_decoder.iou_prediction_head.layers.0.weight"])


def test_deterministic_for_a_recipe_and_seeded(written, tmp_path):
    _, path = written
    again = standin_checkpoint(TINY, cache=tmp_path / "a", progress=False)
    other_seed = standin_checkpoint(replace(TINY, seed=12), cache=tmp_path / "b", progress=False)
    first, second, third = load_tensors(path), load_tensors(again), load_tensors(other_seed)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["image_encoder.patch_embed.proj.weight"], third["image_encoder.patch_embed.proj.weight"])


def test_cached_file_is_reused_without_training(written, monkeypatch):
    cache, path = written
    stamp = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("pretrained again although the cached file exists")

    monkeypatch.setattr(standin, "pretrain_standin", no_training)
    assert standin_checkpoint(TINY, cache=cache, progress=False) == path
    assert path.stat().st_mtime_ns == stamp


def test_cache_key_follows_the_recipe_architecture_and_version(monkeypatch):
    names = {r.file_name() for r in (TINY, replace(TINY, steps=3), replace(TINY, learning_rate=1e-4),
                                     replace(TINY, image_size=128), replace(TINY, seed=12),
                                     replace(TINY, model_type="vit_tiny"))}
    assert len(names) == 6
    before = TINY.file_name()
    # the same model_type with another architecture (e.g. a registry entry edited) is another file
    monkeypatch.setitem(ENCODER_CONFIGS, TINY.model_type, replace(ENCODER_CONFIGS[TINY.model_type], decoder_mlp_dim=256))
    assert TINY.file_name() != before
    monkeypatch.undo()
    assert TINY.file_name() == before
    monkeypatch.setattr(standin, "RECIPE_VERSION", standin.RECIPE_VERSION + 1)
    assert TINY.file_name() != before


def test_cache_folder_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fedfms"


def test_interrupted_write_leaves_no_file(monkeypatch, tmp_path):
    def torn_save(obj, target, *args, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        standin_checkpoint(TINY, cache=tmp_path, progress=False)
    folder = tmp_path / "standin"
    assert list(folder.iterdir()) == []  # neither the target nor a temporary file
