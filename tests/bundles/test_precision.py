"""Mixed precision: the amp / amp_dtype options resolve as documented, bad values are named, and a bundle
trained under autocast keeps (and sends) float32 weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from fedfms.bundle import precision
from fedfms.bundle.precision import AutocastInferer, Precision, parse_amp, resolve_precision
from fedfms.networks import transmitted_state

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), ("true", True), ("FALSE", False),
                                             ("false", False), ("0", False), (1, True), ("Auto", "auto")])
def test_parse_amp(value, expected):
    assert parse_amp("amp", value) is expected if isinstance(expected, bool) else parse_amp("amp", value) == expected


@pytest.mark.parametrize("value", ["maybe", 2, None, ""])
def test_parse_amp_rejects_other_values(value):
    with pytest.raises(ValueError, match="option amp=.*: expected true, false or auto"):
        parse_amp("amp", value)


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_cpu_follows_native_bfloat16(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: native)
    resolved = resolve_precision("auto", "auto", "cpu")
    assert resolved == (Precision(True, torch.bfloat16, "cpu") if native else Precision(False, torch.float32, "cpu"))
    # explicit choices override the measurement-based default
    assert resolve_precision(True, "auto", "cpu") == Precision(True, torch.bfloat16, "cpu")
    assert resolve_precision("false", "bfloat16", torch.device("cpu")).enabled is False


@pytest.mark.parametrize("bf16, dtype", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda_prefers_native_bfloat16(monkeypatch, bf16, dtype):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: calls.append(including_emulation) or bf16)
    resolved = resolve_precision("auto", "auto", "cuda:0")
    assert resolved == Precision(True, dtype, "cuda") and calls == [False]
    assert resolved.needs_grad_scaler is (dtype == torch.float16)
    assert resolve_precision("auto", "float16", "cuda:0").needs_grad_scaler


def test_bad_precision_options_are_named():
    with pytest.raises(ValueError, match="option amp_dtype=.half.: expected one of"):
        resolve_precision(True, "half", "cpu")
    with pytest.raises(ValueError, match="amp_dtype float16 needs a CUDA device"):
        resolve_precision(True, "float16", "cpu")


def test_native_bfloat16_query_matches_cpu_flags():
    """cpu_has_native_bfloat16 uses private torch.cpu helpers: fail loudly if they change, and agree with
    the flags Linux reports."""
    assert isinstance(torch.cpu._is_avx512_bf16_supported(), bool) and isinstance(torch.cpu._is_amx_tile_supported(), bool)
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo")
    flags = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for flag in line.split()}
    assert precision.cpu_has_native_bfloat16() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def test_autocast_inferer_returns_float32_and_computes_in_bfloat16():
    seen = []
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    net[2].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    out = AutocastInferer(Precision(True, torch.bfloat16, "cpu"))(torch.rand(3, 8), net)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in net.parameters())
    out = AutocastInferer(Precision(False, torch.float32, "cpu"))(torch.rand(3, 8), net)
    assert seen[-1] == torch.float32 and out.dtype == torch.float32


def test_the_network_gets_a_plain_tensor_not_a_meta_tensor():
    """MONAI's loaders hand MetaTensors to the inferer; the network must get the same values as a plain
    tensor (each op on a MetaTensor runs Python to carry metadata: 23% of a vit_tiny round on CPU)."""
    from monai.data import MetaTensor

    seen = []
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    net[0].register_forward_pre_hook(lambda module, args: seen.append(type(args[0])))
    image = torch.rand(3, 8)
    out = AutocastInferer(Precision(False, torch.float32, "cpu"))(MetaTensor(image, meta={"filename_or_obj": "a.npy"}), net)
    assert seen == [torch.Tensor] and type(out) is torch.Tensor
    torch.testing.assert_close(out, net(image), rtol=0, atol=0)


def _msa_workflow(small_datalist, tiny_sam_checkpoint, tmp_path, **overrides) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=str(REPO / "bundles" / "msa" / "configs" / "train.json"), workflow_type="train", logging_file=False,
        bundle_root=str(REPO / "bundles" / "msa"), datalist=str(small_datalist), output_dir=str(tmp_path),
        sam_checkpoint=str(tiny_sam_checkpoint), model_type="vit_tiny", image_size=64, batch_size=6, num_workers=0,
        max_epochs=1, device="cpu", **overrides,
    )
    workflow.initialize()
    return workflow


def test_amp_training_keeps_float32_weights(small_datalist, tiny_sam_checkpoint, tmp_path):
    """One bf16-autocast epoch of the MSA bundle (with validation): the encoder ran in bfloat16, the loss
    and what the network returns are float32, and every weight, the transmitted ones included, stays float32."""
    workflow = _msa_workflow(small_datalist, tiny_sam_checkpoint, tmp_path, amp="true", amp_dtype="bfloat16")
    trainer, network = workflow.trainer, workflow.trainer.network
    assert workflow.parser.get_parsed_content("precision") == Precision(True, torch.bfloat16, "cpu")
    assert trainer.amp is False and trainer.optim_set_to_none  # bfloat16 needs no GradScaler
    seen = []
    network.image_encoder.blocks[0].attn.qkv.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    outputs = []  # what the loss saw, before MONAI decollates the batch
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda engine: outputs.append(
        (engine.state.output[Keys.PRED].dtype, engine.state.output[Keys.LOSS].dtype)))
    before = {k: v.clone() for k, v in network.state_dict().items()}
    trainer.run()
    assert torch.bfloat16 in seen and outputs == [(torch.float32, torch.float32)]
    assert workflow.evaluator.state.metrics["val_dice"] >= 0  # validation ran under the same inferer
    changed = [k for k, v in network.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "nothing trained"
    assert {v.dtype for v in network.state_dict().values()} == {torch.float32}
    assert {v.dtype for v in transmitted_state(network).values()} == {torch.float32}


@pytest.mark.parametrize("value", ["false", False])
def test_amp_false_string_disables_autocast(small_datalist, tiny_sam_checkpoint, tmp_path, value):
    workflow = _msa_workflow(small_datalist, tiny_sam_checkpoint, tmp_path, amp=value)
    assert workflow.parser.get_parsed_content("precision").enabled is False
    assert workflow.parser.get_parsed_content("train#inferer").precision.enabled is False
