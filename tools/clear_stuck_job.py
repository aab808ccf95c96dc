#!/usr/bin/env python
"""Mark a job that a server crash left "RUNNING" as FINISHED:ABANDONED, so NVFlare can delete it and
`nvflare poc stop` / `nvflare system shutdown` work again.

    python tools/clear_stuck_job.py --server-workspace SERVER_WORKSPACE JOB_ID

Why a tool: NVFlare 2.9 does not update the status of jobs that were running when the server process
died (its JobRunner.update_unfinished_jobs exists but is never called), and its admin commands refuse
the job both ways: `nvflare job abort` answers "Job ... is not running", `nvflare job delete` answers
"job ... is running"; `nvflare poc stop` then fails with "Job ... is not running". This tool writes the
status NVFlare itself would have written, through NVFlare's job-store API (FilesystemStorage.update_meta
on the job store named in the server's local/resources.json), and changes nothing else: the crashed
job's server run folder (SERVER_WORKSPACE/JOB_ID, with its last global model and round report) stays
for `tools/make_jobs.py --resume-from`. Only use it after the server restarted (`nvflare job list`
still shows the job RUNNING although no server process runs it); see README, "Operating a federation".
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from nvflare.apis.job_def import RunStatus
from nvflare.app_common.storages.filesystem_storage import FilesystemStorage

log = logging.getLogger("clear_stuck_job")


def job_store_root(server_workspace: Path) -> Path:
    """The job store folder (SimpleJobDefManager's uri_root) of the server whose workspace this is."""
    for name in ("resources.json", "resources.json.default"):
        path = server_workspace / "local" / name
        if path.is_file():
            for component in json.loads(path.read_text()).get("components", []):
                if component.get("id") == "job_manager":
                    return Path(component["args"]["uri_root"])
    raise FileNotFoundError(f"no job_manager in {server_workspace}/local/resources.json(.default): is this a server workspace?")


def clear(server_workspace: Path, job_id: str) -> str:
    """Set the job's status to FINISHED:ABANDONED if it is RUNNING or DISPATCHED; return the old status."""
    uri = str(job_store_root(server_workspace) / job_id)
    storage = FilesystemStorage()
    status = storage.get_meta(uri).get("status")
    if status not in (RunStatus.RUNNING.value, RunStatus.DISPATCHED.value):
        raise ValueError(f"job {job_id} is {status}, not RUNNING or DISPATCHED: nothing to clear")
    storage.update_meta(uri, {"status": RunStatus.ABANDONED.value}, replace=False)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server-workspace", type=Path, required=True,
                        help="the server's workspace (startup kit folder holding local/resources.json)")
    parser.add_argument("job_id", help="the stuck job's id (nvflare job list)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        old = clear(args.server_workspace, args.job_id)
    except (OSError, ValueError, KeyError) as error:
        log.error("%s", error)
        return 1
    log.info("job %s: %s -> %s; its run folder %s is kept (tools/make_jobs.py --resume-from)", args.job_id, old,
             RunStatus.ABANDONED.value, args.server_workspace / args.job_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
