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
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedfms.networks import MSASegmenter, transmitted_keys
from fedfms.orchestration.jobs import client_name, write_job
from fedfms.runtime.privacy import WITHHELD, write_site_privacy
from fedfms.runtime.site_config import SITE_CONFIG_FILE, allow_fedfms_components

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
LEAKED = "image_encoder.patch_embed.proj.weight"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_leftovers(kits: dict) -> None:
    """End the processes of this test's POC that ``poc stop`` left running (a server that never became
    ready, a client that never registered), by the ids their startup scripts recorded, and only if that
    process still runs from this test's kit."""
    for kit in kits.values():
        for pid_file in ("pid.fl", "daemon_pid.fl"):
            path = kit.parent / pid_file
            pid = path.read_text().strip() if path.is_file() else ""
            try:
                if pid.isdigit() and str(kit.parent) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(pid), signal.SIGTERM)
            except (FileNotFoundError, ProcessLookupError):
                pass


def _wait_for_clients(env: dict, nvflare: str, clients: list, deadline_s: float = 600) -> None:
    """Poll ``nvflare system status`` until ``clients`` are registered (none: until the server answers,
    which it does with SYSTEM_NOT_READY while no client is connected)."""
    start = time.monotonic()
    status = ""
    while time.monotonic() - start < deadline_s:
        try:
            result = subprocess.run([nvflare, "system", "status"], capture_output=True, text=True, env=env, timeout=60)
            status = result.stdout + result.stderr
            if not clients and (result.returncode == 0 or "SYSTEM_NOT_READY" in status):
                return
            if clients and result.returncode == 0 and all(re.search(rf"\b{c}\b", result.stdout) for c in clients):
                return
        except subprocess.TimeoutExpired:
            status = "nvflare system status timed out"
        time.sleep(5)
    raise AssertionError(f"POC clients {clients} did not register within {deadline_s} s:\n{status}")


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
def test_site_privacy_scope_stops_an_encoder_weight_in_poc_mode(tmp_path, data_root, sam_checkpoint, small_settings, small_sites):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFMS_")}
    env["HOME"] = str(tmp_path / "home")  # poc prepare and the CLI config write under HOME
    (tmp_path / "home").mkdir()
    nvflare = str(Path(sys.executable).with_name("nvflare"))

    def cli(*args: str, timeout: int = 300) -> str:
        result = subprocess.run([nvflare, *args], capture_output=True, text=True, env=env, timeout=timeout)
        assert result.returncode == 0, f"nvflare {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    settings = small_settings("fedmsa", held_out=("UCL",), wait_time_after_min_received=30)
    job = write_job(settings, tmp_path / "jobs", REPO / "bundles")
    assert json.loads((job / "meta.json").read_text())["scope"] == "fedmsa"
    audit_file = tmp_path / "audit" / "server_results.jsonl"
    _leaky_job(job, audit_file)
    poc = tmp_path / "poc"
    cli("poc", "config", "-pw", str(poc))
    cli("poc", "prepare", "-c", *map(client_name, small_sites), "--force")
    # free ports instead of POC's fixed 8002/8003, which another POC on the machine may hold
    project = yaml.safe_load((poc / "project.yml").read_text())
    server = next(p for p in project["participants"] if p["type"] == "server")
    server["fed_learn_port"], server["admin_port"] = _free_port(), _free_port()
    (tmp_path / "project.yml").write_text(yaml.safe_dump(project))
    cli("poc", "prepare", "-i", str(tmp_path / "project.yml"), "--force")
    kits = {p.parent.name: p for p in poc.rglob("local") if (p.parent / "startup").is_dir()}
    for name in ["server", *map(client_name, small_sites)]:
        local = kits[name]
        allow_fedfms_components(local)
        (local / SITE_CONFIG_FILE).write_text(json.dumps(
            {"data_root": str(data_root), "sam_checkpoint": str(sam_checkpoint), "device": "cpu"}))
        if name != "server":
            write_site_privacy(local)  # the hospital's own policy: the shipped scopes, mode drop
    try:
        # `poc start` waits for readiness itself, but its admin login can hang on a loaded machine, and a
        # client whose connection is not up within NVFlare's fixed 15 s never registers: start the
        # server, then one client at a time, polling the system status with a per-call timeout
        cli("poc", "start", "-p", "server", "--no-wait", timeout=300)
        _wait_for_clients(env, nvflare, [])
        for name in map(client_name, small_sites):
            cli("poc", "start", "-p", name, "--no-wait", timeout=300)
            _wait_for_clients(env, nvflare, [name], deadline_s=300)
        job_id = UUID.search(cli("job", "submit", "-j", str(job))).group(0)
        cli("job", "wait", job_id, "--timeout", "900", timeout=960)
        cli("job", "download", job_id, "-o", str(tmp_path / "result"), timeout=300)
    finally:
        subprocess.run([nvflare, "poc", "stop"], capture_output=True, text=True, env=env, timeout=300)
        _stop_leftovers(kits)

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
        return "\n".join(p.read_text() for p in kits[site].parent.rglob("log.txt"))

    stopped = [line for line in site_log("HK").splitlines() if f"removed: tensor '{LEAKED}'" in line]
    assert len(stopped) == 2, site_log("HK")[-5000:]
    withheld = [line for line in site_log("ISBI1_5").splitlines()
                if f"after the job's filters: withheld the result: tensor '{LEAKED}'" in line]
    assert len(withheld) == 2, site_log("ISBI1_5")[-5000:]
    print("\nHK (executor leak, site filter):", stopped[0], "\nISBI1_5 (job filter leak, guard):", withheld[0], sep="\n")

    rounds = json.loads(next((tmp_path / "result").rglob("fedfms_rounds.json")).read_text())
    assert [r["round"] for r in rounds] == [0, 1] and all(set(r["sites"]) == {"HK"} for r in rounds)
