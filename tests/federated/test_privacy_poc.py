"""What leaves a site is enforced by the site, in NVFlare POC mode (separate processes over loopback).

Every client's local/privacy.json holds the shipped scopes (``fedfms.runtime.privacy``, mode drop) and
the FedMSA job declares scope "fedmsa". The job is then modified the way a hostile or buggy job could be:
at HK its executor adds the site's real frozen encoder weight to every train result (before the site's
filter), at ISBI1_5 a job result filter adds one (NVFlare runs job filters after the site's). A filter
on the server records every result that arrives. Expected: HK's filter removes the tensor and logs its
name, HK's models are still aggregated; ISBI1_5's guard withholds its train results; the server never
sees an encoder weight; the job finishes (UCL held out, evaluation only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedfms.networks import MSASegmenter, transmitted_keys
from fedfms.orchestration.jobs import write_job
from fedfms.runtime.privacy import WITHHELD, write_site_privacy

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LEAKED = "image_encoder.patch_embed.proj.weight"


def _leaky_job(job: Path, audit_file: Path) -> None:
    """Ship the test-only pieces in app/custom and wire them: the leaky executor (HK), the late job
    filter (ISBI1_5), the server's audit (first result filter there)."""
    (job / "app" / "custom").mkdir(parents=True)
    shutil.copy(HERE / "fedfms_leaky.py", job / "app" / "custom")
    config_dir = job / "app" / "config"
    client = json.loads((config_dir / "config_fed_client.json").read_text())
    executor = client["executors"][0]["executor"]
    executor["path"] = "fedfms_leaky.LeakyExecutor"
    executor["args"]["leak_site"] = "HK"
    client["task_result_filters"] = [{"tasks": ["train", "validate"], "filters": [
        {"path": "fedfms_leaky.LateLeakFilter", "args": {"leak_site": "ISBI1_5"}}]}]
    (config_dir / "config_fed_client.json").write_text(json.dumps(client, indent=2))
    server = json.loads((config_dir / "config_fed_server.json").read_text())
    server["task_result_filters"] = [{"tasks": ["train", "validate"], "filters": [
        {"path": "fedfms_leaky.ServerResultAudit", "args": {"out_file": str(audit_file)}}]}]
    (config_dir / "config_fed_server.json").write_text(json.dumps(server, indent=2))


@pytest.mark.heavy
def test_site_privacy_scope_stops_an_encoder_weight_in_poc_mode(tmp_path, poc_kits, small_settings):
    settings = small_settings("fedmsa", held_out=("UCL",), wait_time_after_min_received=30)
    job = write_job(settings, tmp_path / "jobs", REPO / "bundles")
    assert json.loads((job / "meta.json").read_text())["scope"] == "fedmsa"
    audit_file = tmp_path / "audit" / "server_results.jsonl"
    _leaky_job(job, audit_file)
    for name, local in poc_kits.kits.items():
        if name != "server":
            write_site_privacy(local)  # the hospital's own policy: the shipped scopes, mode drop
    poc_kits.run_job(job, tmp_path / "result")

    # the server never saw the encoder weight; HK's results arrived without it, ISBI1_5's were withheld
    records = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert not [r for r in records if LEAKED in r.get("tensors", {})]
    expected = set(transmitted_keys(MSASegmenter(model_type="vit_tiny", image_size=64)))
    train = {site: [r for r in records if r["site"] == site and r["task"] == "train"] for site in ("HK", "ISBI1_5")}
    assert len(train["HK"]) == 2 and all(set(r["tensors"]) == expected and r["rc"] == "OK" for r in train["HK"])
    assert len(train["ISBI1_5"]) == 2 and all(r["rc"] == WITHHELD and r["content"] == [] for r in train["ISBI1_5"])
    metrics = [r for r in records if r["task"] == "validate"]
    assert {r["site"] for r in metrics} == {"HK", "ISBI1_5", "UCL"} and all(r["kind"] == "METRICS" for r in metrics)

    # the sites' logs say which tensor was stopped, and by whom
    def site_log(site: str) -> str:
        return "\n".join(p.read_text() for p in poc_kits.kits[site].parent.rglob("log.txt"))

    stopped = [line for line in site_log("HK").splitlines() if f"removed: tensor '{LEAKED}'" in line]
    assert len(stopped) == 2, site_log("HK")[-5000:]
    withheld = [line for line in site_log("ISBI1_5").splitlines()
                if f"after the job's filters: withheld the result: tensor '{LEAKED}'" in line]
    assert len(withheld) == 2, site_log("ISBI1_5")[-5000:]
    print("\nHK (executor leak, site filter):", stopped[0], "\nISBI1_5 (job filter leak, guard):", withheld[0], sep="\n")

    rounds = json.loads(next((tmp_path / "result").rglob("fedfms_rounds.json")).read_text())
    assert [r["round"] for r in rounds] == [0, 1] and all(set(r["sites"]) == {"HK"} for r in rounds)
