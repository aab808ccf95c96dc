"""The FedMSA job in NVFlare POC mode: a server and three client processes over loopback, started,
submitted to, waited for, downloaded from and stopped with the nvflare CLI (HOME redirected)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedfms.orchestration.jobs import write_job

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.heavy
def test_fedmsa_job_in_poc_mode(tmp_path, poc_kits, small_settings):
    job = write_job(small_settings("fedmsa", held_out=("UCL",)), tmp_path / "jobs", REPO / "bundles")
    poc_kits.run_job(job, tmp_path / "result")

    rounds_files = list((tmp_path / "result").rglob("fedfms_rounds.json"))
    assert len(rounds_files) == 1, sorted(str(p) for p in (tmp_path / "result").rglob("*"))[:50]
    rounds = json.loads(rounds_files[0].read_text())
    assert [r["round"] for r in rounds] == [0, 1] and all(set(r["sites"]) == {"HK", "ISBI1_5"} for r in rounds)
    model = next((tmp_path / "result").rglob("FL_global_model.pt"))
    assert "mask_decoder.output_upscaling.0.weight" in torch.load(model, weights_only=True)["model"]
    results = json.loads(next((tmp_path / "result").rglob("fedfms_results.json")).read_text())
    assert set(results) == {"HK", "ISBI1_5", "UCL"}
