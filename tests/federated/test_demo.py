"""The README's first command, tools/demo.py, end to end (heavy: several minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SITES = ["BIDMC", "HK", "I2CVB", "ISBI", "ISBI1.5", "UCL"]
COLUMNS = ("Dice before", "Dice after", "3D Dice before", "3D Dice after")


@pytest.mark.heavy
def test_demo_runs_both_weights_and_reports_every_site(tmp_path):
    env = {"FEDFMS_CACHE_DIR": str(tmp_path / "cache")}  # pretrains the stand-in, as a first run does
    result = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--out", str(tmp_path / "out"), "--rounds", "2"],
                            capture_output=True, text=True, timeout=1800, env={**os.environ, **env})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["synthetic_data"] and summary["held_out"] == ["UCL"]
    assert Path(summary["standin"]["cache_file"]).parent == tmp_path / "cache" / "standin"
    assert set(summary["runs"]) == {"pretrained", "random"}
    assert "STAND-IN" in summary["runs"]["pretrained"]["label"] and "-PT" in summary["runs"]["random"]["label"]
    for run in summary["runs"].values():
        assert [r["site"] for r in run["sites"]] == SITES
        assert [r["role"] for r in run["sites"]].count("held out") == 1
        assert [h["round"] for h in run["history"]] == [0, 1]
        for row in run["sites"]:  # the initial model is scored on the held-out site only
            scored = COLUMNS if row["role"] == "held out" else ("Dice after", "3D Dice after")
            unscored = set(COLUMNS) - set(scored)
            assert all(0.0 <= row[k] <= 1.0 for k in scored) and not unscored & row.keys()
    assert "SYNTHETIC" in result.stdout
    assert "| stand-in: STAND-IN for SAM's SA-1B weights" in result.stdout and "| random (-PT): RANDOM SAM weights" in result.stdout
    for picture in ("learning_curve.png", "overlays.png"):
        assert (out / picture).stat().st_size > 10_000
        assert f"({picture})" in (out / "summary.md").read_text()
    assert (out / "summary.md").read_text().count("| train |") == 10  # five training sites, two runs
