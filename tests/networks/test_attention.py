"""SDPAttention computes segment_anything's own Attention (forward and gradients, windowed and global
blocks of vit_b at 64, 256 and 1024 px), keeps every state-dict key, and is the segmenters' default."""

import copy

import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling.image_encoder import Attention, Block

from fedfms.networks import MSASegmenter, SAMSegmenter
from fedfms.networks.attention import SDPAttention

VIT_B = dict(dim=768, num_heads=12, mlp_ratio=4.0, qkv_bias=True, use_rel_pos=True)


def _vit_b_block(kind: str) -> Block:
    """A vit_b encoder block as ImageEncoderViT builds it (window 14 or global over the 64 x 64 grid),
    with random relative-position tables (SAM zero-initialises them, which would hide the bias)."""
    torch.manual_seed(0)
    if kind == "windowed":
        block = Block(**VIT_B, window_size=14, input_size=(14, 14), norm_layer=torch.nn.LayerNorm)
    else:
        block = Block(**VIT_B, window_size=0, input_size=(64, 64), norm_layer=torch.nn.LayerNorm)
    with torch.no_grad():
        block.attn.rel_pos_h.normal_(std=0.5)
        block.attn.rel_pos_w.normal_(std=0.5)
    return block


def _run(block: Block, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    out = block(x)
    params = [block.attn.qkv.weight, block.attn.proj.weight, block.attn.rel_pos_h, block.attn.rel_pos_w]
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.shape[-1])).sum(), [x, *params])
    return out.detach(), grads


@pytest.mark.parametrize("kind", ["windowed", "global"])
@pytest.mark.parametrize("image_size", [64, 256, pytest.param(1024, marks=pytest.mark.heavy), "1024-forward"])
def test_sdpa_block_equals_segment_anything_block(kind, image_size):
    """Float32, one vit_b block: the output and the gradients of input, qkv, proj and rel-pos tables."""
    forward_only = image_size == "1024-forward"
    grid = 64 if forward_only else image_size // 16
    theirs = _vit_b_block(kind)
    ours = copy.deepcopy(theirs)
    ours.attn = SDPAttention(ours.attn)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(1, grid, grid, 768, generator=torch.Generator().manual_seed(1))
    if forward_only:  # the 1024 px forward pass stays in the fast suite; gradients at 1024 are heavy
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), atol=2e-5, rtol=1e-5)
        return
    out_theirs, grads_theirs = _run(theirs, x)
    out_ours, grads_ours = _run(ours, x)
    torch.testing.assert_close(out_ours, out_theirs, atol=2e-5, rtol=1e-5)
    for name, a, b in zip(["input", "qkv", "proj", "rel_pos_h", "rel_pos_w"], grads_ours, grads_theirs):
        assert b.abs().max() > 0, f"no {name} gradient to compare"
        torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max().item(), rtol=1e-4, msg=f"{kind} {image_size}: {name}")


def test_sdpa_without_relative_positions():
    torch.manual_seed(0)
    theirs = Attention(64, num_heads=4, use_rel_pos=False)
    x = torch.randn(2, 5, 7, 64)
    torch.testing.assert_close(SDPAttention(theirs)(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_official_checkpoint_loads_key_for_key_with_either_attention(vit_b_sam):
    """A state dict of segment_anything's own build_sam_vit_b loads into both attention variants of MSA
    (SAMSegmenter: tests/networks/test_checkpoints.py); both hold the same keys, and the checkpoint's
    tensors end up where segment_anything has them."""
    sam, path = vit_b_sam
    theirs = sam.state_dict()
    models = {attention: MSASegmenter(model_type="vit_b", image_size=256, checkpoint=path, attention=attention)
              for attention in ("sdpa", "sam")}
    assert isinstance(models["sdpa"].image_encoder.blocks[2].attn, SDPAttention)
    assert type(models["sam"].image_encoder.blocks[2].attn) is Attention
    assert models["sdpa"].state_dict().keys() == models["sam"].state_dict().keys()
    state = models["sdpa"].state_dict()
    assert set(theirs) <= set(state)
    assert all(torch.equal(state[k], v) for k, v in theirs.items())


def test_segmenter_default_is_sdpa_and_builder_keys_match():
    """The default attention is SDPA, and its state-dict keys are exactly those of sam_model_registry's
    vit_b (the prompt encoder's unused weights included)."""
    with torch.device("meta"):
        ours = SAMSegmenter(model_type="vit_b")
        theirs = sam_model_registry["vit_b"]()
    assert ours.attention == "sdpa"
    assert set(ours.state_dict()) == set(theirs.state_dict())


@pytest.mark.parametrize("cls", [SAMSegmenter, MSASegmenter])
def test_segmenter_outputs_and_gradients_match_across_attention(cls):
    torch.manual_seed(3)
    reference = cls(model_type="vit_tiny", num_classes=2, image_size=64, attention="sam")
    with torch.no_grad():
        for block in reference.image_encoder.blocks:
            block.attn.rel_pos_h.normal_()
            block.attn.rel_pos_w.normal_()
    fast = cls(model_type="vit_tiny", num_classes=2, image_size=64)
    fast.load_state_dict(reference.state_dict())
    x = torch.rand(2, 3, 64, 64)
    outputs = []
    for model in (reference, fast):
        out = model(x)
        torch.nn.functional.binary_cross_entropy_with_logits(out, torch.zeros_like(out)).backward()
        outputs.append(out.detach())
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    grads = dict(reference.named_parameters())
    for name, param in fast.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kwargs, message", [
    ({"attention": "flash"}, "option attention='flash': expected one of"),
    ({"activation_checkpointing": "maybe"}, "option activation_checkpointing='maybe': expected a boolean"),
])
def test_bad_attention_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MSASegmenter(model_type="vit_tiny", image_size=64, **kwargs)
