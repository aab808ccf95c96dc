"""The efficiency benchmark measures real steps (tiny sizes here; ratios live in the benchmark's output)."""

import subprocess
import sys
from pathlib import Path

from fedfms.reporting.efficiency import markdown_table, measure_in_process

ROOT = Path(__file__).resolve().parents[2]


def test_measurements_are_consistent():
    sam = measure_in_process("sam", "vit_tiny", 64, steps=1)
    msa = measure_in_process("msa", "vit_tiny", 64, steps=1)
    for result in (sam, msa):
        assert result.train_step_tflops > 0 and result.train_step_seconds > 0 and result.peak_memory_mib > 0
        assert result.transmitted_bytes == 4 * result.transmitted_params == 4 * result.trainable_params
    assert msa.trainable_params < sam.trainable_params
    assert msa.total_params > sam.total_params  # the adapters are extra weights
    table = markdown_table([sam, msa]).splitlines()
    assert len(table) == 4 and table[2].startswith("| FedSAM vit_tiny | 64 |")


def test_tool_help():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark_efficiency.py"), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--image-size" in done.stdout
