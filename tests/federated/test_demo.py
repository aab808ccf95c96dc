"""The README's first command, tools/demo.py, end to end (heavy: a few minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.heavy
def test_demo_runs_and_reports_every_site(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--out", str(tmp_path), "--rounds", "2"],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["synthetic_data"] and summary["random_sam_weights"]
    assert [r["site"] for r in summary["sites"]] == ["BIDMC", "HK", "I2CVB", "ISBI", "ISBI1.5", "UCL"]
    assert [r["role"] for r in summary["sites"]].count("held out") == 1 and summary["held_out"] == ["UCL"]
    assert [h["round"] for h in summary["history"]] == [0, 1]
    for row in summary["sites"]:
        assert all(0.0 <= row[k] <= 1.0 for k in ("Dice before", "Dice after", "3D Dice before", "3D Dice after"))
    assert "SYNTHETIC" in result.stdout and "RANDOM SAM weights" in result.stdout and "| UCL | held out |" in result.stdout
    assert (tmp_path / "learning_curve.png").stat().st_size > 10_000
    assert (tmp_path / "summary.md").read_text().count("| train |") == 5
