"""A server crash in NVFlare POC mode, and the README's runbook to continue the job (heavy): the server
process and its job process are killed mid-job, POC's own daemon restarts the server, the stuck job is
cleared (tools/clear_stuck_job.py), a resume job (tools/make_jobs.py --resume-from) continues from the
crashed job's last global model, and the job reaches its final round with the earlier rounds intact."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from fedfms.core.wire import GLOBAL_MODEL_IN_RUN, ROUNDS_FILE
from fedfms.orchestration.jobs import write_job

REPO = Path(__file__).resolve().parents[2]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ROUNDS = 4


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wait(condition, timeout: float, what: str):
    start = time.time()
    while time.time() - start < timeout:
        value = condition()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.heavy
@pytest.mark.timeout(2400)  # two jobs and a server restart
def test_server_crash_then_resume_in_poc_mode(tmp_path, poc_kits, small_settings):
    cli = poc_kits.cli
    settings = small_settings("fedmsa", held_out=("UCL",), cross_site_eval=False, wait_time_after_min_received=30,
                              profile=small_settings("fedmsa").profile.override(rounds=ROUNDS))
    job = write_job(settings, tmp_path / "jobs", REPO / "bundles")
    server = poc_kits.kits["server"].parent
    stopped = False
    try:
        poc_kits.start()
        job_id = UUID.search(cli("job", "submit", "-j", str(job))[1]).group(0)
        run_dir = server / job_id
        rounds_file = run_dir / ROUNDS_FILE
        _wait(lambda: rounds_file.is_file() and len(json.loads(rounds_file.read_text())) >= 2, 900, "two rounds")

        # the crash: the server process and the job's server process die (POC's daemon restarts the server)
        old_server = int((server / "pid.fl").read_text())
        ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
        job_process = [int(line.split()[0]) for line in ps.splitlines()[1:]
                       if "runner_process" in line and f"-m {server} " in line and job_id in line]
        assert len(job_process) == 1, ps
        for pid in (old_server, *job_process):
            os.kill(pid, signal.SIGKILL)
        crashed = json.loads(rounds_file.read_text())
        done = len(crashed)
        assert 2 <= done < ROUNDS and (run_dir / GLOBAL_MODEL_IN_RUN).is_file()

        # NVFlare 2.9 after the restart: the job stays RUNNING, abort refuses it (the runbook's reason)
        def restarted():
            rc, out = cli("job", "list", check=False)
            return rc == 0 and int((server / "pid.fl").read_text()) != old_server and out
        listing = _wait(restarted, 300, "the restarted server")
        assert re.search(rf"{job_id}\s+\S+\s+RUNNING", listing), listing
        assert cli("job", "abort", job_id, "--force", check=False)[0] != 0
        assert _tool("clear_stuck_job").main(["--server-workspace", str(server), job_id]) == 0
        assert re.search(rf"{job_id}\s+\S+\s+FINISHED:ABANDONED", cli("job", "list")[1])

        # resume: the same job with resume_from = the crashed job's server run folder
        resumed = write_job(dataclasses.replace(settings, resume_from=str(run_dir), name="fedmsa_prostate_resumed"),
                            tmp_path / "jobs", REPO / "bundles")
        new_id = UUID.search(cli("job", "submit", "-j", str(resumed))[1]).group(0)
        cli("job", "wait", new_id, "--timeout", "900", timeout=960)
        rc, meta = cli("job", "meta", new_id)
        assert "FINISHED:COMPLETED" in meta, meta
        cli("job", "download", new_id, "-o", str(tmp_path / "result"), timeout=300)
        cli("poc", "stop", timeout=300)  # works again once the stuck job is cleared
        stopped = True
    finally:
        if not stopped:
            poc_kits.stop()

    rounds = json.loads(next((tmp_path / "result").rglob(ROUNDS_FILE)).read_text())
    assert [r["round"] for r in rounds] == list(range(ROUNDS))
    assert rounds[:done] == crashed and rounds[done]["resumed_from"] == str(run_dir)
    assert all(set(r["sites"]) == {"HK", "ISBI1_5"} and not r["rejected"] for r in rounds[done:])
    model = torch.load(next((tmp_path / "result").rglob("FL_global_model.pt")), weights_only=True)
    assert model["train_conf"]["fedfms_round"] == ROUNDS - 1
    assert all(bool(torch.isfinite(v).all()) for v in model["model"].values() if v.is_floating_point())
