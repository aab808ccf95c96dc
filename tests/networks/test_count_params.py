"""Parameter accounting reproduces the paper's counts, or explains each difference."""

import subprocess
import sys
from pathlib import Path

from fedfms.reporting.parameters import count_parameters

ROOT = Path(__file__).resolve().parents[2]
DEPTH_ADAPTERS_B, IOU_HEAD, UNUSED_HYPERNETS, PAPER_HEAD = 3_550_464, 132_612, 3 * 139_808, 5


def test_counts_against_paper():
    sam = count_parameters("sam", "vit_b")
    msa = count_parameters("msa", "vit_b")
    assert sam.total + PAPER_HEAD == sam.paper_learnable == 93_735_477
    assert msa.paper_learnable - DEPTH_ADAPTERS_B - IOU_HEAD - UNUSED_HYPERNETS - PAPER_HEAD == msa.transmitted
    assert msa.transmitted_bytes == 4 * msa.transmitted
    assert sam.trainable == sam.transmitted == sam.total - 6_220 - IOU_HEAD - UNUSED_HYPERNETS


def test_tool_prints_table():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "count_params.py")], capture_output=True, text=True, check=True).stdout
    sam_b = next(line for line in out.splitlines() if line.startswith("FedSAM vit_b"))
    msa_b = next(line for line in out.splitlines() if line.startswith("FedMSA vit_b"))
    assert sam_b.split()[2:4] == ["93.7", "M"] and sam_b.endswith("93.7 M")
    assert "10.6 M" in msa_b and msa_b.endswith("14.7 M")
    assert "Depth adapters" in out
    assert subprocess.run([sys.executable, str(ROOT / "tools" / "count_params.py"), "--help"], capture_output=True).returncode == 0
