"""Trained checkpoints load strictly, including FedMSA's transmitted-only global model on top of a SAM
checkpoint; checkpoints are saved atomically."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from monai.networks.nets import UNet

from fedfms.bundle.checkpoint import AtomicCheckpointSaver, PartialCheckpointLoader, load_trained_weights
from fedfms.networks import CheckpointError, MSASegmenter, transmitted_keys, transmitted_state


def _msa(sam_checkpoint, seed: int) -> MSASegmenter:
    torch.manual_seed(seed)
    return MSASegmenter(model_type="vit_tiny", image_size=64, checkpoint=sam_checkpoint)


def test_transmitted_only_checkpoint_loads_on_top_of_the_sam_checkpoint(tiny_sam_checkpoint, tmp_path):
    trained = _msa(tiny_sam_checkpoint, seed=1)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if param.requires_grad:
                param.add_(1.0)  # stands in for training
    path = tmp_path / "global.pt"
    torch.save({"model": transmitted_state(trained)}, path)  # nested, as NVFlare's persistor writes

    site = _msa(tiny_sam_checkpoint, seed=2)  # other adapter init, same frozen SAM weights
    loaded = load_trained_weights(site, path)
    assert loaded == sorted(transmitted_keys(site))
    for key, value in site.state_dict().items():
        torch.testing.assert_close(value, trained.state_dict()[key], msg=key)


def test_bad_checkpoints_are_errors_naming_file_and_keys(tiny_sam_checkpoint, tmp_path):
    net = _msa(tiny_sam_checkpoint, seed=0)
    state = transmitted_state(net)
    cases = {
        "unexpected": {**state, "extra.weight": torch.zeros(1)},
        "shape mismatch": {**state, next(iter(state)): torch.zeros(1)},
        "lacks": {k: v for i, (k, v) in enumerate(state.items()) if i},
    }
    for message, bad in cases.items():
        path = tmp_path / f"{message.replace(' ', '_')}.pt"
        torch.save(bad, path)
        with pytest.raises(CheckpointError, match=message) as info:
            load_trained_weights(net, path)
        assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match=r"missing.pt \(ckpt_path\) does not exist"):
        load_trained_weights(net, tmp_path / "missing.pt")
    (tmp_path / "model_dir.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"model_dir.pt \(ckpt_path\) is a folder, expected a PyTorch checkpoint file"):
        load_trained_weights(net, tmp_path / "model_dir.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pt \(ckpt_path\) is empty \(0 bytes\)"):
        load_trained_weights(net, tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("x")
    with pytest.raises(CheckpointError, match=r"text.pt \(ckpt_path\) is not a readable PyTorch file .*: \S"):  # a reason, never empty
        load_trained_weights(net, tmp_path / "text.pt")


def test_unet_checkpoint_must_be_complete(tmp_path):
    net = UNet(2, 3, 1, channels=(4, 8), strides=(2,), norm="batch")
    state = net.state_dict()
    torch.save({k: v for k, v in state.items() if "running_mean" not in k}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="lacks"):  # BatchNorm statistics are transmitted too
        load_trained_weights(net, tmp_path / "partial.pt")
    torch.save(state, tmp_path / "full.pt")
    assert load_trained_weights(net, tmp_path / "full.pt") == sorted(state)


def test_checkpoint_saver_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 1)
    engine = Engine(lambda engine, batch: None)
    AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_final=True, final_filename="model_final.pt").attach(engine)
    engine.run([0], max_epochs=1)
    saved = torch.load(tmp_path / "model_final.pt", weights_only=True)

    def crash(obj, f, **kwargs):  # a save that dies half-way
        (f.write if hasattr(f, "write") else open(f, "wb").write)(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with torch.no_grad():
        net.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        engine.run([0], max_epochs=2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_final.pt"]
    torch.testing.assert_close(torch.load(tmp_path / "model_final.pt", weights_only=True), saved)


def test_empty_ckpt_path_keeps_the_network_as_built():
    net = torch.nn.Linear(2, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    engine = Engine(lambda engine, batch: None)
    PartialCheckpointLoader("", net).attach(engine)  # `--ckpt_path ""` on the command line
    engine.run([0], max_epochs=1)
    torch.testing.assert_close(net.state_dict(), before)
