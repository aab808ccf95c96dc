"""The efficiency benchmark measures real steps (tiny sizes here; ratios live in the benchmark's output),
counts SDPA's CPU kernel, reports rows it could not measure, and plans the GPU run it cannot run here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fedfms.reporting.efficiency import (CONFIGURATIONS, EfficiencyResult, flop_counter, markdown_table, measure,
                                         measure_in_process, ratios)

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "benchmark_efficiency.py"


def test_measurements_are_consistent():
    sam = measure_in_process("fedsam_reference", "vit_tiny", 64, steps=1)
    msa = measure_in_process("fedmsa_reference", "vit_tiny", 64, steps=1)
    fast = measure_in_process("fedmsa_defaults", "vit_tiny", 64, steps=1)
    for result in (sam, msa, fast):
        assert result.status == "ok" and result.precision == "float32"  # this CPU: no native bfloat16
        assert result.train_step_tflops > 0 and result.train_step_seconds > 0 and result.peak_memory_mib > 0
        assert result.train_step_cpu_seconds > 0 and result.predict_seconds_per_image > 0
        assert result.upload_bytes == result.download_bytes == 4 * result.trainable_params
    assert msa.trainable_params < sam.trainable_params
    assert msa.total_params > sam.total_params  # the adapters are extra weights
    assert fast.trainable_params == msa.trainable_params
    # SDPA runs the attention with the relative positions folded into wider heads: more FLOPs counted
    # (a kernel the counter missed would show fewer)
    assert fast.train_step_tflops > msa.train_step_tflops
    table = markdown_table([sam, msa, fast]).splitlines()
    assert len(table) == 5 and table[2].startswith("| FedSAM fp32 (reference path) | vit_tiny | 64 | 1 | float32 |")
    assert table[4].endswith("x memory |") and "x speed" in table[4]


def test_peak_memory_is_read_before_the_flop_counted_step(monkeypatch):
    """Under FlopCounterMode a checkpointed step keeps what activation checkpointing frees: its peak
    must not be the row's."""
    import fedfms.reporting.efficiency as efficiency

    events = []
    count_flops, read_peak = efficiency.flop_counter, efficiency._peak_memory_mib
    monkeypatch.setattr(efficiency, "flop_counter", lambda: events.append("flops") or count_flops())
    monkeypatch.setattr(efficiency, "_peak_memory_mib", lambda device: events.append("peak") or read_peak(device))
    result = efficiency.measure_in_process("fedmsa_checkpointing", "vit_tiny", 64, steps=1)
    assert events == ["peak", "flops"] and result.train_step_tflops > 0


def test_cpu_sdpa_kernel_is_counted():
    """SDPA on CPU runs aten ops FlopCounterMode does not know (torch internals): forward 4*B*h*L*S*E
    multiply-adds x 2, backward 2.5x the forward, as torch counts its CUDA kernels."""
    q = torch.randn(2, 3, 40, 24, requires_grad=True)
    with flop_counter() as counter:
        F.scaled_dot_product_attention(q, q, q).sum().backward()
    assert counter.get_total_flops() == int(4 * 2 * 3 * 40 * 40 * 24 * 3.5)


def _result(config, seconds, cpu_seconds, memory, device="cpu", status="ok"):
    spec = CONFIGURATIONS[config]
    return EfficiencyResult(config=config, label=spec.label, network=spec.network, model_type="vit_b", image_size=1024,
                            batch_size=1, device=device, precision="float32", status=status, train_step_tflops=2.0,
                            train_step_seconds=seconds, train_step_cpu_seconds=cpu_seconds, peak_memory_mib=memory)


def test_ratios_against_the_baseline_row():
    base = _result("fedmsa_reference", 30.0, 60.0, 10000.0)
    row = _result("fedmsa_defaults", 20.0, 20.0, 2500.0)
    assert ratios(row, [base, row]) == {"speedup": 3.0, "memory_ratio": 0.25, "flops_ratio": 1.0}  # CPU time on CPU
    on_gpu = [_result("fedmsa_reference", 4.0, 4.0, 100.0, "cuda:0"), _result("fedmsa_defaults", 1.0, 3.0, 50.0, "cuda:0")]
    assert ratios(on_gpu[1], on_gpu)["speedup"] == 4.0  # wall time on CUDA
    assert ratios(base, [base, row]) is None  # the reference has no baseline
    failed = _result("fedmsa_reference", 0.0, 0.0, 0.0, status="out of memory")
    assert ratios(row, [failed, row]) is None
    assert "| out of memory |" in markdown_table([failed, row]) and "| - |" in markdown_table([failed, row])


def test_failed_and_timed_out_rows_are_reported():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    failed = measure("fedmsa_defaults", "vit_tiny", 64, steps=1, device="cuda:0")
    assert failed.status.startswith("failed:") and failed.train_step_seconds == 0
    assert measure("fedmsa_defaults", "vit_tiny", 64, timeout=0.5, steps=1).status.startswith("timed out after")


def test_tool_plans_paper_batch_sizes():
    done = subprocess.run([sys.executable, str(TOOL), "--model-type", "vit_b", "vit_l", "--batch-size", "paper",
                           "--configs", "fedsam_reference", "fedmsa_defaults", "--dry-run"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t")[:4] for line in done.stdout.splitlines()]
    assert rows == [["fedsam_reference", "vit_b", "256 px", "batch 6"], ["fedmsa_defaults", "vit_b", "256 px", "batch 4"],
                    ["fedsam_reference", "vit_l", "256 px", "batch 6"], ["fedmsa_defaults", "vit_l", "256 px", "batch 4"]]
    bad = subprocess.run([sys.executable, str(TOOL), "--batch-size", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "positive integer or 'paper'" in bad.stderr


def test_gpu_script_plan_and_refusal_without_gpu():
    """tools/gpu_benchmark.sh was not run on a GPU here: its plan (every configuration, ViT-B and ViT-L at
    1024 px, the paper's batch sizes, on CUDA) and its refusal on a machine without one are what is checked."""
    env = {**os.environ, "PYTHON": sys.executable}
    script = str(ROOT / "tools" / "gpu_benchmark.sh")
    done = subprocess.run(["bash", script, "unused_out", "--dry-run"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t")[:5] for line in done.stdout.splitlines()]
    expected = [[config, model_type, "1024 px", f"batch {6 if spec.network == 'sam' else 4}", "cuda:0"]
                for model_type in ("vit_b", "vit_l") for config, spec in CONFIGURATIONS.items()]
    assert rows == expected
    if not torch.cuda.is_available():
        refused = subprocess.run(["bash", script, "unused_out"], capture_output=True, text=True, env=env)
        assert refused.returncode != 0 and "no CUDA device" in refused.stderr


def test_tool_help():
    done = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--image-size" in done.stdout and "--configs" in done.stdout
