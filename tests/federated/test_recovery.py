"""Recovery after a server crash without running NVFlare: the resume options of a job, the round to
resume at, and clearing a job NVFlare left RUNNING (the heavy POC test runs the whole runbook)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from nvflare.app_common.storages.filesystem_storage import FilesystemStorage

from fedfms.core.wire import GLOBAL_MODEL_IN_RUN
from fedfms.orchestration.jobs import JobSettings, job_configs
from fedfms.runtime.controller import resume_round

REPO = Path(__file__).resolve().parents[2]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _component(config: dict, component_id: str) -> dict:
    return next(c for c in config["components"] + config.get("workflows", []) if c["id"] == component_id)


def test_a_resume_job_loads_the_crashed_model_and_report(tmp_path):
    run = tmp_path / "server" / "3f2a"
    server = job_configs(JobSettings("fedmsa", "prostate", resume_from=str(run)), REPO / "bundles")["server"]
    assert _component(server, "persistor")["args"] == {"source_ckpt_file_full_name": str(run / GLOBAL_MODEL_IN_RUN)}
    assert _component(server, "scatter_and_gather")["args"]["resume_from"] == str(run)
    assert _component(server, "report")["args"]["resume_from"] == str(run)
    plain = job_configs(JobSettings("fedmsa", "prostate"), REPO / "bundles")["server"]
    assert "resume_from" not in _component(plain, "scatter_and_gather")["args"]
    with pytest.raises(ValueError, match="absolute path on the server"):
        JobSettings("fedmsa", "prostate", resume_from="server/3f2a")


def test_resume_round_is_the_one_after_the_last_reported(tmp_path):
    (tmp_path / "fedfms_rounds.json").write_text(json.dumps([{"round": r} for r in range(7)]))
    assert resume_round(str(tmp_path)) == 7
    with pytest.raises(ValueError, match=r"round report .*missing.*WORKSPACE/JOB_ID"):
        resume_round(str(tmp_path / "elsewhere"))
    (tmp_path / "fedfms_rounds.json").write_text("[")
    with pytest.raises(ValueError, match="missing or unreadable"):
        resume_round(str(tmp_path))


def test_make_jobs_resume_needs_one_job_and_dp_excludes_fedunet(tmp_path, capsys):
    make_jobs = _tool("make_jobs")
    with pytest.raises(SystemExit):
        make_jobs.main(["--out", str(tmp_path), "--resume-from", str(tmp_path / "run")])
    assert "--resume-from continues one job" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not offered for fedunet"):
        JobSettings("fedunet", "prostate", dp_clip_norm=1.0)
    assert make_jobs.main(["--out", str(tmp_path), "--method", "fedmsa", "--dataset", "prostate",
                           "--resume-from", str(tmp_path / "run"), "--dp-clip-norm", "0.5"]) == 0
    client = json.loads((tmp_path / "fedmsa_prostate" / "app" / "config" / "config_fed_client.json").read_text())
    assert [f["path"].rsplit(".", 1)[1] for f in client["task_result_filters"][0]["filters"]] == ["GaussianUpdateDP"]
    assert [f["path"].rsplit(".", 1)[1] for f in client["task_data_filters"][0]["filters"]] == ["DPGlobalModelTap"]


def test_clear_stuck_job_marks_only_a_running_job_abandoned(tmp_path):
    store = tmp_path / "jobs-storage"
    workspace = tmp_path / "server"
    (workspace / "local").mkdir(parents=True)
    (workspace / "local" / "resources.json").write_text(json.dumps({"components": [
        {"id": "job_manager", "path": "nvflare.apis.impl.job_def_manager.SimpleJobDefManager",
         "args": {"uri_root": str(store), "job_store_id": "job_store"}}]}))
    storage = FilesystemStorage()
    storage.create_object(str(store / "stuck"), b"job", {"job_id": "stuck", "status": "RUNNING"}, overwrite_existing=False)
    storage.create_object(str(store / "done"), b"job", {"job_id": "done", "status": "FINISHED:COMPLETED"},
                          overwrite_existing=False)
    tool = _tool("clear_stuck_job")
    assert tool.main(["--server-workspace", str(workspace), "stuck"]) == 0
    assert storage.get_meta(str(store / "stuck")) == {"job_id": "stuck", "status": "FINISHED:ABANDONED"}
    assert tool.main(["--server-workspace", str(workspace), "done"]) == 1  # nothing to clear
    assert storage.get_meta(str(store / "done"))["status"] == "FINISHED:COMPLETED"
    assert tool.main(["--server-workspace", str(tmp_path), "stuck"]) == 1  # not a server workspace
