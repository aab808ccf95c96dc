"""Fixtures of the federated tests: small sites cut from the synthetic demo data, a random SAM-format
checkpoint, a helper that writes a job with the real generator and runs the NVFlare simulator, and
prepared POC startup kits driven through the nvflare CLI."""

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
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import pytest
import torch
import yaml

from fedfms.orchestration.jobs import JobSettings, client_name, write_job
from fedfms.registry import Profile
from fedfms.runtime.site_config import SITE_CONFIG_FILE, allow_fedfms_components
from fedfms.networks import SAMSegmenter

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: Training samples per small site: deliberately unequal, so FedAvg's weighting is visible.
SMALL_SITES = {"HK": 6, "ISBI1.5": 3, "UCL": 4}
#: A tiny training profile of a real job: vit_tiny, 64 px, 2 rounds, batch 2, no loader workers.
SMALL_PROFILE = Profile("small", model_type="vit_tiny", image_size=64, rounds=2, batch_size=2, num_workers=0)


@pytest.fixture(scope="session")
def data_root(cut_demo_sites) -> Path:
    """DATA_ROOT/prostate/<site>/datalist.json for three small sites cut from the synthetic demo data
    (synthetic: true): SMALL_SITES[site] training, 2 validation and 4 test slices each."""
    return cut_demo_sites({site: (n_train, 2, 4) for site, n_train in SMALL_SITES.items()})


@pytest.fixture(scope="session")
def sam_checkpoint(tmp_path_factory) -> Path:
    """A seeded random-init vit_tiny SAM state dict in the official checkpoint layout (synthetic)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = SAMSegmenter(model_type="vit_tiny", image_size=64)
    path = tmp_path_factory.mktemp("sam") / "sam_vit_tiny_random.pth"
    torch.save({k: v for k, v in net.state_dict().items() if k not in set(net.new_keys())}, path)
    return path


@dataclass
class SimulatorRun:
    job: Path
    server: Path  # the server's run folder (app_server/, cross_site_val/, fedfms_rounds.json, tb_events/)
    log: str
    audit: Optional[Path]
    returncode: int = 0

    @property
    def rounds(self) -> list:
        return json.loads((self.server / "fedfms_rounds.json").read_text())


def _small_settings(method: str, **kwargs) -> JobSettings:
    defaults = dict(sites=tuple(SMALL_SITES), wait_time_after_min_received=120, profile=SMALL_PROFILE)
    return JobSettings(method, "prostate", **{**defaults, **kwargs})


@pytest.fixture(scope="session")
def small_settings():
    """JobSettings factory for a tiny profile of a real job: vit_tiny, 64 px, 2 rounds, the small sites."""
    return _small_settings


@pytest.fixture(scope="session")
def small_sites() -> dict:
    """Site folder -> number of training samples of the small sites."""
    return dict(SMALL_SITES)


@pytest.fixture
def run_simulator(tmp_path, data_root, sam_checkpoint):
    """Write the job with fedfms.orchestration.jobs.write_job, configure the workspace like a site would
    (local/fedfms_site.json + allow-listed fedfms components), run ``nvflare simulator``."""

    def run(settings: JobSettings, audit: bool = False, data: Optional[Path] = None,
            result_filters: Sequence[dict] = (), expect_success: bool = True, workspace_name: str = "workspace",
            threads: int = 3) -> SimulatorRun:
        """result_filters: extra client result filters ({"path": "fedfms.runtime.faults.FaultInjection",
        "args": ...}), applied first, before the audit records what leaves the site (audit is then on).
        threads: simulator threads; fewer than sites makes the simulator re-create clients between tasks."""
        job = write_job(settings, tmp_path / "jobs" / workspace_name, REPO / "bundles")
        audit = audit or bool(result_filters)
        audit_dir = tmp_path / f"audit_{workspace_name}" if audit else None
        if audit:
            (job / "app" / "custom").mkdir(parents=True)
            shutil.copy(HERE / "fedfms_audit.py", job / "app" / "custom")
            config_path = job / "app" / "config" / "config_fed_client.json"
            config = json.loads(config_path.read_text())
            # The audit sees the wire: first of the incoming chain, last of the outgoing one (around
            # e.g. the half-precision filters the job may already have).
            # (NVFlare allows one chain per task, and the job's chains cover train and validate.) Every
            # task of the executor is audited (a FednnU-Net job's planning tasks too).
            tasks = config["executors"][0]["tasks"]
            for key, direction in (("task_data_filters", "in"), ("task_result_filters", "out")):
                recorder = {"path": "fedfms_audit.AuditFilter", "args": {"direction": direction, "out_dir": str(audit_dir)}}
                job_filters = config[key][0]["filters"] if config[key] else []
                # fedfms.runtime.faults.FaultInjection learns the round (and the received model) from FaultTap
                tap = [{"path": "fedfms.runtime.faults.FaultTap", "args": {}}] if result_filters else []
                filters = [recorder, *job_filters, *tap] if direction == "in" else [*result_filters, *job_filters, recorder]
                config[key] = [{"tasks": tasks, "filters": filters}]
            config_path.write_text(json.dumps(config, indent=2))
        workspace = tmp_path / workspace_name
        allow_fedfms_components(workspace / "local")
        (workspace / "local" / SITE_CONFIG_FILE).write_text(json.dumps(
            {"data_root": str(data or data_root), "sam_checkpoint": str(sam_checkpoint), "device": "cpu"}))
        nvflare = Path(sys.executable).with_name("nvflare")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFMS_")}
        result = subprocess.run([str(nvflare), "simulator", str(job), "-w", str(workspace), "-t", str(threads)],
                                capture_output=True, text=True, env=env, timeout=1500)
        log = result.stdout + result.stderr
        server = workspace / "server" / "simulate_job"
        if expect_success:
            assert result.returncode == 0 and (server / "fedfms_rounds.json").is_file(), log[-5000:]
        return SimulatorRun(job, server, log, audit_dir, result.returncode)

    return run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PocKits:
    """A prepared POC folder on free ports: ``kits`` maps each participant (server, sites) to its startup
    kit's local/ (fedfms components allowed, local/fedfms_site.json written); ``cli`` runs the nvflare
    CLI with HOME redirected and returns (exit status, output), asserting success unless ``check=False``."""

    env: Dict[str, str]
    nvflare: str
    kits: Dict[str, Path]

    def cli(self, *args: str, timeout: int = 300, check: bool = True) -> Tuple[int, str]:
        result = subprocess.run([self.nvflare, *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        out = result.stdout + result.stderr
        assert not check or result.returncode == 0, f"nvflare {' '.join(args)}:\n{out}"
        return result.returncode, out

    def start(self) -> None:
        """Start the server, then one site at a time, each once the previous one registered. `poc start`
        waits for readiness itself, but its admin login can hang on a loaded machine, and a client whose
        connection is not up within NVFlare's fixed 15 s never registers."""
        self.cli("poc", "start", "-p", "server", "--no-wait")
        self._wait_for_clients([])
        for name in (n for n in self.kits if n != "server"):
            self.cli("poc", "start", "-p", name, "--no-wait")
            self._wait_for_clients([name], deadline_s=300)

    def stop(self) -> None:
        """``poc stop``, then end what it left running (a server that never became ready, a client that
        never registered), by the ids their startup scripts recorded and only if they run from these kits."""
        self.cli("poc", "stop", check=False)
        for kit in self.kits.values():
            for pid_file in ("pid.fl", "daemon_pid.fl"):
                path = kit.parent / pid_file
                pid = path.read_text().strip() if path.is_file() else ""
                try:
                    if pid.isdigit() and str(kit.parent) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                        os.kill(int(pid), signal.SIGTERM)
                except (FileNotFoundError, ProcessLookupError):
                    pass

    def run_job(self, job: Path, result_dir: Path) -> str:
        """Start the POC, submit ``job``, wait for it, download its results to ``result_dir``, stop the
        POC (also on failure); return the job id."""
        try:
            self.start()
            job_id = JOB_ID.search(self.cli("job", "submit", "-j", str(job))[1]).group(0)
            self.cli("job", "wait", job_id, "--timeout", "900", timeout=960)
            self.cli("job", "download", job_id, "-o", str(result_dir), timeout=300)
        finally:
            self.stop()
        return job_id

    def _wait_for_clients(self, clients: Sequence[str], deadline_s: float = 600) -> None:
        """Poll ``nvflare system status`` until ``clients`` are registered (none: until the server
        answers, which it does with SYSTEM_NOT_READY while no client is connected)."""
        start, status = time.monotonic(), ""
        while time.monotonic() - start < deadline_s:
            try:
                rc, status = self.cli("system", "status", timeout=60, check=False)
                if not clients and (rc == 0 or "SYSTEM_NOT_READY" in status):
                    return
                if clients and rc == 0 and all(re.search(rf"\b{c}\b", status) for c in clients):
                    return
            except subprocess.TimeoutExpired:
                status = "nvflare system status timed out"
            time.sleep(5)
        raise AssertionError(f"POC clients {list(clients)} did not register within {deadline_s} s:\n{status}")


@pytest.fixture
def poc_kits(tmp_path, data_root, sam_checkpoint, small_sites) -> PocKits:
    """``nvflare poc config`` + ``poc prepare`` for the small sites under tmp_path/poc, on free ports
    (POC's fixed 8002/8003 may be held by another POC on the machine), each kit set up as a site admin
    would (fedfms allow-listed, the site's data and SAM checkpoint named)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFMS_")}
    env["HOME"] = str(tmp_path / "home")  # poc prepare and the CLI config write under HOME
    (tmp_path / "home").mkdir()
    poc = PocKits(env, str(Path(sys.executable).with_name("nvflare")), {})
    folder = tmp_path / "poc"
    poc.cli("poc", "config", "-pw", str(folder))
    poc.cli("poc", "prepare", "-c", *map(client_name, small_sites), "--force")
    project = yaml.safe_load((folder / "project.yml").read_text())
    server = next(p for p in project["participants"] if p["type"] == "server")
    server["fed_learn_port"], server["admin_port"] = _free_port(), _free_port()
    (tmp_path / "project.yml").write_text(yaml.safe_dump(project))
    poc.cli("poc", "prepare", "-i", str(tmp_path / "project.yml"), "--force")
    kits = {p.parent.name: p for p in folder.rglob("local") if (p.parent / "startup").is_dir()}
    poc.kits = {name: kits[name] for name in ["server", *map(client_name, small_sites)]}
    for local in poc.kits.values():
        allow_fedfms_components(local)
        (local / SITE_CONFIG_FILE).write_text(json.dumps(
            {"data_root": str(data_root), "sam_checkpoint": str(sam_checkpoint), "device": "cpu"}))
    return poc
