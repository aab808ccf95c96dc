"""Loading official SAM checkpoints: equivalence with segment_anything, and every error case."""

import copy

import pytest
import torch

from fedfms.networks import CheckpointError, MSASegmenter, SAMSegmenter, load_partial_state, transmitted_state


def _same_embedding(ours: torch.Tensor, theirs: torch.Tensor, attention: str) -> None:
    """segment_anything's own attention gives its embedding bit for bit; SDPA up to float32 rounding."""
    if attention == "sam":
        assert torch.equal(ours, theirs)
    else:
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attention", ["sam", "sdpa"])
def test_official_checkpoint_gives_segment_anything_embedding(vit_b_sam, attention):
    sam, path = vit_b_sam
    ours = SAMSegmenter(model_type="vit_b", checkpoint=path, attention=attention).eval()
    theirs_state = sam.state_dict()
    assert all(torch.equal(v, theirs_state[k]) for k, v in ours.state_dict().items())
    # At reduced depth for CPU time: the first three blocks (window and global attention) of both.
    theirs = copy.deepcopy(sam.image_encoder)
    for encoder in (ours.image_encoder, theirs):
        encoder.blocks = encoder.blocks[:3]
    x = torch.rand(1, 3, 1024, 1024)
    with torch.no_grad():
        _same_embedding(ours.encode(x), theirs(x), attention)


@pytest.mark.heavy
@pytest.mark.parametrize("attention", ["sam", "sdpa"])
def test_official_checkpoint_full_depth_embedding(vit_b_sam, attention):
    sam, path = vit_b_sam
    ours = SAMSegmenter(model_type="vit_b", checkpoint=path, attention=attention).eval()
    x = torch.rand(1, 3, 1024, 1024)
    with torch.no_grad():
        _same_embedding(ours.encode(x), sam.image_encoder(x), attention)


def test_msa_with_zero_adapter_outputs_equals_sam(tmp_path):
    torch.manual_seed(2)
    sam = SAMSegmenter(model_type="vit_tiny", num_classes=2, image_size=128).eval()
    path = tmp_path / "tiny.pth"
    torch.save({k: v for k, v in sam.state_dict().items() if not k.startswith("class_head.")}, path)
    sam = SAMSegmenter(model_type="vit_tiny", num_classes=2, image_size=128, checkpoint=path).eval()
    msa = MSASegmenter(model_type="vit_tiny", num_classes=2, image_size=128, checkpoint=path).eval()
    msa.class_head.load_state_dict(sam.class_head.state_dict())
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        assert not torch.allclose(msa(x), sam(x))  # default-initialised adapters do change the output
        for block in msa.image_encoder.blocks:
            for adapter in (block.space_adapter, block.mlp_adapter):
                adapter.fc2.weight.zero_()
                adapter.fc2.bias.zero_()
        assert torch.allclose(msa(x), sam(x), atol=1e-5)


def test_msa_loads_official_checkpoint_with_only_new_keys_left(vit_b_sam):
    sam, path = vit_b_sam
    msa = MSASegmenter(model_type="vit_b", image_size=256, checkpoint=path)
    theirs = sam.state_dict()
    untouched = [k for k in msa.state_dict() if k not in theirs]
    assert untouched and all(".space_adapter." in k or ".mlp_adapter." in k for k in untouched)
    assert torch.equal(msa.state_dict()["image_encoder.blocks.3.attn.qkv.weight"], theirs["image_encoder.blocks.3.attn.qkv.weight"])


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    with pytest.raises(CheckpointError, match=f"{path} does not exist.*never downloads"):
        SAMSegmenter(model_type="vit_tiny", checkpoint=path)


def test_folder_and_empty_checkpoint_say_so(tmp_path):
    (tmp_path / "sam_vit_b_01ec64.pth").mkdir()
    with pytest.raises(CheckpointError, match="sam_vit_b_01ec64.pth is a folder, expected a PyTorch checkpoint file"):
        SAMSegmenter(model_type="vit_tiny", checkpoint=tmp_path / "sam_vit_b_01ec64.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pth is empty \(0 bytes\)"):
        SAMSegmenter(model_type="vit_tiny", checkpoint=tmp_path / "empty.pth")


def test_truncated_checkpoint(tmp_path, vit_b_sam):
    _, path = vit_b_sam
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: 1 << 20])
    with pytest.raises(CheckpointError, match=f"{cut} is not a readable PyTorch file"):
        SAMSegmenter(model_type="vit_b", checkpoint=cut)


def test_non_sam_checkpoint(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 1, 1), "fc.bias": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"resnet.pth does not fit model_type 'vit_tiny': it is not a SAM checkpoint.*unexpected: conv1.weight, fc.bias"):
        SAMSegmenter(model_type="vit_tiny", checkpoint=path)


def test_pickled_object_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="does not hold a state dict of named tensors"):
        SAMSegmenter(model_type="vit_tiny", checkpoint=path)


def test_checkpoint_of_another_model_type(vit_b_sam):
    _, path = vit_b_sam
    with pytest.raises(CheckpointError, match=r"model_type 'vit_tiny': it looks like a vit_b checkpoint; shape mismatch: image_encoder\."):
        MSASegmenter(model_type="vit_tiny", checkpoint=path)


def test_checkpoint_of_the_other_tiny_model_type(tmp_path):
    """vit_tiny and vit_nano share the encoder blocks; the neck's width tells them apart."""
    path = tmp_path / "nano.pth"
    torch.save(SAMSegmenter(model_type="vit_nano").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"model_type 'vit_tiny': it looks like a vit_nano checkpoint; shape mismatch: image_encoder\.neck"):
        SAMSegmenter(model_type="vit_tiny", checkpoint=path)


def test_checkpoint_with_missing_and_extra_keys(tmp_path):
    state = SAMSegmenter(model_type="vit_tiny").state_dict()
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra"] = torch.zeros(1)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing: mask_decoder.iou_token.weight; unexpected: mask_decoder.extra"):
        SAMSegmenter(model_type="vit_tiny", checkpoint=path)


def test_checkpoint_with_nan_values(tmp_path):
    state = SAMSegmenter(model_type="vit_tiny").state_dict()
    state["mask_decoder.iou_token.weight"][0, 0] = float("nan")
    path = tmp_path / "diverged.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"diverged.pth holds NaN/inf values in 1 tensors: mask_decoder.iou_token.weight"):
        SAMSegmenter(model_type="vit_tiny", checkpoint=path)
    target = MSASegmenter(model_type="vit_tiny", image_size=64)
    sent = transmitted_state(target)
    sent[next(iter(sent))] = torch.full_like(next(iter(sent.values())), float("inf"))
    with pytest.raises(CheckpointError, match="state from round 3 holds NaN/inf values"):
        load_partial_state(target, sent, "round 3")


def test_partial_state_loads_and_rejects_foreign_keys():
    source = MSASegmenter(model_type="vit_tiny", image_size=64)
    target = MSASegmenter(model_type="vit_tiny", image_size=64)
    sent = transmitted_state(source)
    load_partial_state(target, sent, "round 3 global model")
    assert all(torch.equal(target.state_dict()[k], v) for k, v in sent.items())
    with pytest.raises(CheckpointError, match=r"state from global.pt does not fit MSASegmenter: unexpected: bogus"):
        load_partial_state(target, {"bogus": torch.zeros(1)}, "global.pt")
