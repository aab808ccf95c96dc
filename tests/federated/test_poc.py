"""The FedMSA job in NVFlare POC mode: a server and three client processes over loopback, started,
submitted to, waited for, downloaded from and stopped with the nvflare CLI (HOME redirected)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedfms.orchestration.jobs import client_name, write_job
from fedfms.runtime.site_config import SITE_CONFIG_FILE, allow_fedfms_components

REPO = Path(__file__).resolve().parents[2]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.mark.heavy
def test_fedmsa_job_in_poc_mode(tmp_path, data_root, sam_checkpoint, small_settings, small_sites):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFMS_")}
    env["HOME"] = str(tmp_path / "home")  # poc prepare and the CLI config write under HOME
    (tmp_path / "home").mkdir()
    nvflare = str(Path(sys.executable).with_name("nvflare"))

    def cli(*args: str, timeout: int = 300) -> str:
        result = subprocess.run([nvflare, *args], capture_output=True, text=True, env=env, timeout=timeout)
        assert result.returncode == 0, f"nvflare {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    settings = small_settings("fedmsa", held_out=("UCL",))
    job = write_job(settings, tmp_path / "jobs", REPO / "bundles")
    poc = tmp_path / "poc"
    cli("poc", "config", "-pw", str(poc))
    cli("poc", "prepare", "-c", *map(client_name, small_sites), "--force")
    kits = {p.parent.name: p for p in poc.rglob("local") if (p.parent / "startup").is_dir()}
    for name in ["server", *map(client_name, small_sites)]:
        local = kits[name]
        allow_fedfms_components(local)
        (local / SITE_CONFIG_FILE).write_text(json.dumps(
            {"data_root": str(data_root), "sam_checkpoint": str(sam_checkpoint), "device": "cpu"}))
    try:
        cli("poc", "start", timeout=600)
        job_id = UUID.search(cli("job", "submit", "-j", str(job))).group(0)
        cli("job", "wait", job_id, "--timeout", "900", timeout=960)
        cli("job", "download", job_id, "-o", str(tmp_path / "result"), timeout=300)
    finally:
        subprocess.run([nvflare, "poc", "stop"], capture_output=True, text=True, env=env, timeout=300)

    rounds_files = list((tmp_path / "result").rglob("fedfms_rounds.json"))
    assert len(rounds_files) == 1, sorted(str(p) for p in (tmp_path / "result").rglob("*"))[:50]
    rounds = json.loads(rounds_files[0].read_text())
    assert [r["round"] for r in rounds] == [0, 1] and all(set(r["sites"]) == {"HK", "ISBI1_5"} for r in rounds)
    model = next((tmp_path / "result").rglob("FL_global_model.pt"))
    assert "mask_decoder.output_upscaling.0.weight" in torch.load(model, weights_only=True)["model"]
    results = json.loads(next((tmp_path / "result").rglob("fedfms_results.json")).read_text())
    assert set(results) == {"HK", "ISBI1_5", "UCL"}
