"""Shapes, trainable sets and gradients of the prompt-free SAM / MSA segmenters."""

import pytest
import torch
from segment_anything import sam_model_registry

from fedfms.networks import ENCODER_CONFIGS, MSASegmenter, SAMSegmenter, transmitted_keys, transmitted_state

SEGMENTERS = [SAMSegmenter, MSASegmenter]


@pytest.mark.parametrize("cls", SEGMENTERS)
@pytest.mark.parametrize("num_classes", [1, 2])
@pytest.mark.parametrize("image_size", [64, 128, 256])
@pytest.mark.parametrize("model_type", ["vit_tiny", "vit_nano"])
def test_output_shape(cls, num_classes, image_size, model_type):
    model = cls(model_type=model_type, num_classes=num_classes, image_size=image_size).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, image_size, image_size))
    assert logits.shape == (2, num_classes, image_size // 4, image_size // 4)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("cls", SEGMENTERS)
def test_vit_b_runs_at_256(cls):
    model = cls(model_type="vit_b", image_size=256).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 256, 256)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("num_classes", [1, 2])
def test_batched_prompt_free_decoding_equals_per_image_decoding(num_classes):
    """The batch shares one empty prompt set; each image must decode exactly as if alone (binary:
    SAM's single-mask output, i.e. mask token 0; C > 1: the class head over the 4 mask outputs)."""
    model = SAMSegmenter(model_type="vit_tiny", num_classes=num_classes, image_size=64).eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        emb = model.encode(x)
        pe = model.prompt_encoder.pe_layer(tuple(emb.shape[-2:])).unsqueeze(0)
        no_prompts = emb.new_zeros((1, 0, 256))
        if num_classes == 1:
            alone = [model.mask_decoder(e[None], pe, no_prompts, 0.0, multimask_output=False)[0] for e in emb]
        else:
            alone = [model.class_head(model.mask_decoder.predict_masks(e[None], pe, no_prompts, 0.0)[0]) for e in emb]
        assert torch.allclose(model(x), torch.cat(alone), atol=1e-5)


def test_traced_model_takes_any_batch_size():
    model = MSASegmenter(model_type="vit_tiny", num_classes=2, image_size=64).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(1, 3, 64, 64), check_trace=False)
        x = torch.rand(3, 3, 64, 64)
        assert torch.allclose(traced(x), model(x), atol=1e-6)


def test_bad_input_shape_is_named():
    model = SAMSegmenter(model_type="vit_tiny", image_size=64)
    with pytest.raises(ValueError, match=r"B x 3 x 64 x 64, got \(1, 1, 64, 64\)"):
        model(torch.rand(1, 1, 64, 64))


@pytest.mark.parametrize("kwargs, message", [
    ({"model_type": "vit_x"}, "unknown model_type 'vit_x'"),
    ({"image_size": 100}, "multiple of 16"),
    ({"num_classes": 0}, "num_classes"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SAMSegmenter(**{"model_type": "vit_tiny", **kwargs})


@pytest.mark.parametrize("cls", SEGMENTERS)
@pytest.mark.parametrize("num_classes", [1, 2])
def test_trainable_tensors_are_exactly_those_with_gradient(cls, num_classes):
    model = cls(model_type="vit_tiny", num_classes=num_classes, image_size=64)
    model(torch.rand(2, 3, 64, 64)).logsumexp(dim=(1, 2, 3)).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == with_grad == set(transmitted_keys(model))


def test_sam_trains_everything_decoding_uses():
    model = SAMSegmenter(model_type="vit_tiny", image_size=64)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(
        n.startswith(("prompt_encoder.", "mask_decoder.iou_prediction_head.", "mask_decoder.output_hypernetworks_mlps."))
        for n in frozen
    )
    assert any(n.startswith("image_encoder.blocks.0.attn.") for n in transmitted_keys(model))


def _vit_b_msa_expected_keys():
    """FedMSA's transmitted set for vit_b, binary, derived independently from segment_anything's Sam."""
    with torch.device("meta"):
        sam = sam_model_registry["vit_b"]()
    adapters = [
        f"image_encoder.blocks.{i}.{adapter}.{layer}.{kind}"
        for i in range(12)
        for adapter in ("space_adapter", "mlp_adapter")
        for layer in ("fc1", "fc2")
        for kind in ("weight", "bias")
    ]
    decoder = [
        k for k, _ in sam.named_parameters()
        if k.startswith("mask_decoder.")
        and not k.startswith("mask_decoder.iou_prediction_head.")
        and not k.startswith(tuple(f"mask_decoder.output_hypernetworks_mlps.{i}." for i in (1, 2, 3)))
    ]
    return set(adapters + decoder)


def test_vit_b_transmitted_sets_are_pinned():
    with torch.device("meta"):
        msa = MSASegmenter(model_type="vit_b")
        sam = SAMSegmenter(model_type="vit_b")
    msa_keys = transmitted_keys(msa)
    assert set(msa_keys) == _vit_b_msa_expected_keys()
    assert len(msa_keys) == len(set(msa_keys)) == 192  # 96 adapter tensors + 96 decoder tensors
    shapes = {k: tuple(v.shape) for k, v in transmitted_state(msa).items()}
    assert shapes["image_encoder.blocks.0.space_adapter.fc1.weight"] == (192, 768)
    assert shapes["image_encoder.blocks.11.mlp_adapter.fc2.weight"] == (768, 192)
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 10_607_232
    # FedSAM: the whole of SAM but the prompt encoder, IoU head and unused binary hypernetworks.
    sam_state = transmitted_state(sam)
    assert sum(v.numel() for v in sam_state.values()) == 93_735_472 - 6_220 - 132_612 - 3 * 139_808
    assert all(v.dtype == torch.float32 for v in sam_state.values())


def test_two_class_head_is_transmitted():
    model = MSASegmenter(model_type="vit_tiny", num_classes=2, image_size=64)
    keys = transmitted_keys(model)
    assert {"class_head.weight", "class_head.bias"} <= set(keys)
    assert all(f"mask_decoder.output_hypernetworks_mlps.{i}.layers.0.weight" in keys for i in range(4))


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_encoder_configs_match_segment_anything_builders(model_type):
    with torch.device("meta"):
        theirs = {k: v.shape for k, v in sam_model_registry[model_type]().state_dict().items()}
        ours = {k: v.shape for k, v in SAMSegmenter(model_type=model_type).state_dict().items()}
    assert ours == theirs
    assert ENCODER_CONFIGS[model_type].official_checkpoint.startswith(f"sam_{model_type}_")


@pytest.mark.parametrize("cls", SEGMENTERS)
def test_vit_nano_is_vit_tiny_with_a_decoder_half_as_wide(cls):
    """vit_nano: vit_tiny's encoder blocks, a 128-wide neck, prompt encoder, decoder and IoU head (SAM:
    256), decoder MLPs of 512 (SAM: 2048); every other tensor as vit_tiny's, fewer values to send."""
    with torch.device("meta"):
        tiny, nano = (cls(model_type=t, image_size=128) for t in ("vit_tiny", "vit_nano"))
    tiny_shapes, nano_shapes = ({k: tuple(v.shape) for k, v in m.state_dict().items()} for m in (tiny, nano))
    assert set(tiny_shapes) == set(nano_shapes)
    assert all(nano_shapes[k] == v for k, v in tiny_shapes.items() if k.startswith("image_encoder.blocks."))
    assert nano_shapes["image_encoder.neck.0.weight"] == (128, 64, 1, 1)
    assert nano_shapes["image_encoder.neck.2.weight"] == (128, 128, 3, 3)
    assert nano_shapes["mask_decoder.transformer.layers.0.mlp.lin1.weight"] == (512, 128)
    assert nano_shapes["mask_decoder.iou_prediction_head.layers.0.weight"] == (128, 128)
    assert nano_shapes["mask_decoder.output_upscaling.0.weight"] == (128, 32, 2, 2)
    assert tiny_shapes["mask_decoder.transformer.layers.0.mlp.lin1.weight"] == (2048, 256)
    tiny_sent, nano_sent = (sum(t.numel() for t in transmitted_state(m).values()) for m in (tiny, nano))
    assert nano_sent < tiny_sent / 3


@pytest.mark.parametrize("cls", SEGMENTERS)
@pytest.mark.parametrize("num_classes", [1, 2])
def test_activation_checkpointing_gives_same_gradients(cls, num_classes):
    torch.manual_seed(1)
    plain = cls(model_type="vit_tiny", num_classes=num_classes, image_size=64)
    ckpt = cls(model_type="vit_tiny", num_classes=num_classes, image_size=64, activation_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 64, 64)
    for model in (plain, ckpt):
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), torch.zeros(2, num_classes, 16, 16)).backward()
    grads = dict(plain.named_parameters())
    compared = 0
    for name, param in ckpt.named_parameters():
        if param.requires_grad:
            assert torch.allclose(param.grad, grads[name].grad, atol=1e-6, rtol=1e-5), name
            compared += 1
    assert compared == len(transmitted_keys(plain))
