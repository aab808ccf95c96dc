"""A failing run is recorded and the study goes on; --resume skips finished runs; runs are published
atomically (no training: the bundles folder is empty, so every run fails at once)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fedfms.orchestration.simulator import StepError, run_logged
from fedfms.registry import Profile
from fedfms.study import StudySettings, discover_sites, plan_study, run_study


def study(root: Path, out: Path, **kwargs) -> StudySettings:
    return StudySettings(dataset="prostate", data_root=root, out=out, methods=("fedunet", "unet"), held_out=("UCL",),
                         profile=Profile("test", model_type="vit_tiny", image_size=64, rounds=1), command="pytest", **kwargs)


def test_failures_are_recorded_and_the_study_continues(fake_root, tmp_path):
    out = tmp_path / "out"
    (out / "runs" / ".unet__UCL.tmp-killed").mkdir(parents=True)  # left behind by a hard kill
    outcome = run_study(study(fake_root, out), bundles_dir=tmp_path / "no_bundles", progress=False)
    assert [r["name"] for r in outcome.records] == ["fedunet__UCL", "unet__UCL"]
    assert [r["name"] for r in outcome.failures] == ["fedunet__UCL", "unet__UCL"]
    fed = json.loads((out / "runs" / "fedunet__UCL" / "record.json").read_text())
    assert fed["status"] == "failed" and fed["metrics"] is None
    assert "FileNotFoundError" in fed["error"] and "no_bundles/unet/configs/train.json" in fed["error"]
    central = json.loads((out / "runs" / "unet__UCL" / "record.json").read_text())
    assert central["error"] == f"FileNotFoundError: bundle config {tmp_path}/no_bundles/unet/configs/train.json not found " \
                               "(expected the repository's bundles/ folder)"
    assert central["study_command"] == "pytest" and central["settings"]["held_out"] == "UCL"
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["fedunet__UCL", "unet__UCL"]  # no staging left
    text = (out / "results.md").read_text()
    assert "## Failed runs" in text and "| UCL | failed / 0.563 | failed / - |" in text
    assert "- `unet__UCL` (U-Net, UCL held out): FileNotFoundError: bundle config" in text and "Traceback" not in text


def test_resume_skips_finished_runs_with_unchanged_settings(fake_root, tmp_path):
    settings = study(fake_root, tmp_path / "out")
    planned = {r.name: r for r in plan_study(settings, discover_sites(fake_root, "prostate"))}
    finished = {"name": "unet__UCL", "label": "U-Net", "method": "unet", "federated": False, "pretrained": None,
                "held_out": "UCL", "status": "finished", "paper_row": None, "settings": planned["unet__UCL"].settings,
                "metrics": {"held_out": {"dice": 0.42}, "sources": {"HK": {"dice": 0.5}}}, "history": None, "error": None}
    run_dir = tmp_path / "out" / "runs" / "unet__UCL"
    run_dir.mkdir(parents=True)
    (run_dir / "record.json").write_text(json.dumps(finished))
    outcome = run_study(settings, bundles_dir=tmp_path / "no_bundles", resume=True, progress=False)
    assert outcome.records[1] == finished and [r["name"] for r in outcome.failures] == ["fedunet__UCL"]
    assert "| UCL | failed / 0.563 | 0.4200 / - |" in (tmp_path / "out" / "results.md").read_text()
    # Changed settings (another number of rounds): the finished run is not reused but run again.
    outcome = run_study(replace(settings, profile=settings.profile.override(rounds=2)), bundles_dir=tmp_path / "no_bundles", resume=True, progress=False)
    assert [r["name"] for r in outcome.failures] == ["fedunet__UCL", "unet__UCL"]


def test_a_failing_child_is_reported_with_its_log(tmp_path):
    log = tmp_path / "logs" / "step.log"
    with pytest.raises(StepError, match=r"(?s)exit code 3: .*step.log, last lines:\n.*boom"):
        run_logged([sys.executable, "-c", "import sys; print('boom', flush=True); sys.exit(3)"], log)
    assert log.read_text().startswith("$ ") and "boom" in log.read_text()
    with pytest.raises(StepError, match="timed out after 1 s"):
        run_logged([sys.executable, "-c", "import time; time.sleep(30)"], log, timeout=1)
    assert run_logged([sys.executable, "-c", "pass"], log) < 30



FAKE_SIMULATOR = """
import json, pathlib, sys
workspace, rounds, saved, log = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
run = workspace / "server" / "simulate_job"
(run / "app_server").mkdir(parents=True)
(run / "fedfms_rounds.json").write_text(json.dumps([{"round": r} for r in range(rounds)]))
if saved:
    (run / "app_server" / "FL_global_model.pt").write_bytes(b"model")
print(pathlib.Path(log).read_text())
sys.exit(1)
"""
FINISHED = "- INFO - Finished ScatterAndGather Training."
LATE_SUBMIT = "- CRITICAL - failed to decode streamed submit_update in server job cell server.simulate_job"


@pytest.mark.parametrize("rounds_done, saved, lines, finished", [
    (3, True, [FINISHED, LATE_SUBMIT], True),
    (2, True, [FINISHED, LATE_SUBMIT], False),  # a round is missing
    (3, False, [FINISHED, LATE_SUBMIT], False),  # no global model
    (3, True, [FINISHED, "- ERROR - something else"], False),
    (3, True, [LATE_SUBMIT, FINISHED], False),  # the failure came before training ended
])
def test_simulator_failing_after_the_last_round_counts_only_for_nvflares_late_submit_error(
        tmp_path, monkeypatch, caplog, rounds_done, saved, lines, finished):
    from fedfms.orchestration import simulator

    fake_log = tmp_path / "nvflare_output.txt"
    fake_log.write_text("\n".join(lines))
    monkeypatch.setattr(simulator, "simulator_command", lambda job, workspace, threads: [
        sys.executable, "-c", FAKE_SIMULATOR, str(workspace), str(rounds_done), str(int(saved)), str(fake_log)])

    def run(rounds, workspace):
        return simulator.run_simulator(tmp_path / "job", workspace, 1, tmp_path / "sim.log", rounds=rounds)

    if finished:
        assert run(3, tmp_path / "ws") > 0
        assert "failed after training had finished (all 3 rounds reported" in caplog.text
        with pytest.raises(StepError):  # without the round count (a job with cross-site evaluation) it fails
            run(None, tmp_path / "ws2")
    else:
        with pytest.raises(StepError, match="exit code 1"):
            run(3, tmp_path / "ws")


def test_a_cancelled_simulator_is_stopped(tmp_path, monkeypatch):
    """The demo runs two simulators at once; when one fails, the other's ``cancel`` is set and it must end
    (its process killed) instead of running for minutes more."""
    import os
    import threading
    import time

    from fedfms.orchestration import simulator

    pid_file = tmp_path / "pid"
    monkeypatch.setattr(simulator, "simulator_command", lambda job, workspace, threads: [
        sys.executable, "-c", f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(60)"])
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    start = time.perf_counter()
    with pytest.raises(StepError, match="cancelled"):
        simulator.run_simulator(tmp_path / "job", tmp_path / "ws", 1, tmp_path / "sim.log", cancel=cancel)
    assert time.perf_counter() - start < 30
    with pytest.raises(ProcessLookupError):  # terminated and reaped
        os.kill(int(pid_file.read_text()), 0)


def test_a_background_run_and_the_sessions_it_starts_get_a_lower_priority(tmp_path):
    """The demo runs the random-weights simulator in the background at a lower CPU priority. NVFlare
    starts every client in a new session (setsid), and where Linux schedules by session (autogroup) only
    the session's nice value counts: both the processes' own value and their sessions' must be lowered,
    never the caller's session."""
    import os
    import threading
    import time

    from fedfms.orchestration.simulator import run_logged

    pids = tmp_path / "pids"
    child = ("import os, pathlib, subprocess, sys, time; "
             "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(8)'], start_new_session=True); "
             f"pathlib.Path({str(pids)!r}).write_text(f'{{os.getpid()}} {{p.pid}}'); p.wait()")
    seen = {}

    def inspect():
        time.sleep(6)  # run_logged lowers the new session within its 2 s poll
        parent, grandchild = map(int, pids.read_text().split())
        seen["nice"] = (os.getpriority(os.PRIO_PROCESS, parent), os.getpriority(os.PRIO_PROCESS, grandchild))
        seen["sessions"] = {pid: Path(f"/proc/{pid}/autogroup").read_text() for pid in (parent, grandchild, os.getpid())
                            if Path(f"/proc/{pid}/autogroup").exists()}

    watcher = threading.Thread(target=inspect)
    watcher.start()
    run_logged([sys.executable, "-c", child], tmp_path / "bg.log", niceness=7)
    watcher.join()
    assert seen["nice"] == (os.getpriority(os.PRIO_PROCESS, 0) + 7,) * 2
    if seen["sessions"]:  # a kernel with autogroup: the new session is lowered, ours and the parent's are not
        parent, grandchild = map(int, pids.read_text().split())
        assert seen["sessions"][grandchild].split()[-1] == "7"
        assert seen["sessions"][os.getpid()] == seen["sessions"][parent] and not seen["sessions"][parent].endswith(" 7\n")
