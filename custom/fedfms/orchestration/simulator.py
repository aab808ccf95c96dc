"""Running NVFlare's simulator (and other child processes) with a log file each.

Every step is a separate process started with an exact command line, so the command can be recorded
and re-run by hand, a crash cannot leave state behind in the caller, and Ctrl-C reaches the child too.
Used by the demo (``fedfms.orchestration.demo``) and the study runner (``fedfms.study``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set

from fedfms.core.wire import ROUNDS_FILE


log = logging.getLogger(__name__)

#: What NVFlare 2.9's simulator logs when it fails a finished job at shutdown: a site's late (re)submitted
#: result is still being streamed when the server's download service has stopped (seen under CPU load,
#: after the last round was aggregated and saved), and the server job process exits with an error.
TRAINING_FINISHED = "Finished ScatterAndGather Training."
LATE_SUBMIT_FAILURE = "failed to decode streamed submit_update"


class StepError(RuntimeError):
    """A child process failed; the message names the command, exit code and log, with the log's tail."""


def child_environment(threads: Optional[int] = None) -> Dict[str, str]:
    """The study's environment for a child; ``threads`` caps its OpenMP threads (None: unchanged)."""
    env = os.environ.copy()
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _parents() -> Dict[int, int]:
    """Every process id -> its parent's (Linux /proc; {} elsewhere)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    return parents


def lower_priority(root: int, niceness: int, done: Set[int]) -> None:
    """Give the session of each descendant of ``root`` not in ``done`` that runs in a session of its own
    the nice value ``niceness`` (adding them to ``done``). Why sessions: NVFlare's simulator starts every
    client in a new session (setsid), and where Linux schedules by session (autogroup,
    /proc/sys/kernel/sched_autogroup_enabled) each session competes as one, whatever its processes' own
    nice values; ``/proc/PID/autogroup`` holds the session's value (``man 7 sched``). Without autogroup
    the processes' own values, inherited from ``nice -n`` at launch, apply. The caller's session is left
    alone. Best effort: a process that is gone, or a kernel without autogroup, is skipped."""
    children: Dict[int, List[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    own, pending = os.getsid(0), list(children.get(root, []))
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, []))
        if pid in done:
            continue
        with contextlib.suppress(OSError):
            if os.getsid(pid) != own:
                Path(f"/proc/{pid}/autogroup").write_text(str(niceness))
        done.add(pid)


def niced(argv: Sequence[str], niceness: int) -> List[str]:
    """``argv`` under ``nice -n NICENESS`` (a lower CPU priority, inherited by every process it starts);
    ``argv`` itself for 0."""
    return ["nice", "-n", str(niceness), *argv] if niceness else list(argv)


def run_logged(argv: Sequence[str], log_path: Path, env: Optional[Mapping[str, str]] = None,
               poll: Optional[Callable[[], None]] = None, timeout: Optional[float] = None, niceness: int = 0) -> float:
    """Run ``argv`` with stdout and stderr into ``log_path``; ``poll`` is called every 2 s while it runs.
    ``niceness`` > 0 runs it and every process it starts at that lower CPU priority (``nice -n``, and
    ``lower_priority`` every 2 s for the sessions it starts). Returns the seconds taken; StepError (with
    the last lines of the log) on a non-zero exit or timeout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    argv = niced(argv, niceness)
    reniced: Set[int] = set()
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(env or os.environ))
        try:
            while process.poll() is None:
                if niceness:
                    lower_priority(process.pid, niceness, reniced)
                if timeout and time.perf_counter() - start > timeout:
                    process.kill()
                    process.wait()
                    raise StepError(f"timed out after {timeout:.0f} s: {shlex.join(argv)} (log {log_path})")
                if poll:
                    poll()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(2)
        finally:
            if process.poll() is None:  # interrupted (Ctrl-C, error in poll): do not leave the child running
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(30)
                if process.poll() is None:
                    process.kill()
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise StepError(f"exit code {process.returncode}: {shlex.join(argv)}\nlog {log_path}, last lines:\n{tail}")
    return time.perf_counter() - start


def simulator_command(job: Path, workspace: Path, threads: int) -> List[str]:
    """``nvflare simulator JOB -w WORKSPACE -t THREADS`` with the nvflare of this Python environment
    (clients come from the job's deploy_map)."""
    nvflare = Path(sys.executable).with_name("nvflare")
    return [str(nvflare), "simulator", str(job), "-w", str(workspace), "-t", str(threads)]


def _finished_before_failing(log_path: Path, rounds_file: Path, rounds: int) -> bool:
    """Whether a failed simulator run had finished: all ``rounds`` in the round report, the global model
    saved, and NVFlare's late-submit error (LATE_SUBMIT_FAILURE) logged after training had ended. Only
    for jobs whose last workflow is the training (no cross-site evaluation)."""
    text = log_path.read_text(errors="replace")
    finished = text.find(TRAINING_FINISHED)
    failure = text.find(LATE_SUBMIT_FAILURE, max(finished, 0))
    try:
        reported = len(json.loads(rounds_file.read_text()))
    except (OSError, json.JSONDecodeError):
        return False
    saved = (rounds_file.parent / "app_server" / "FL_global_model.pt").is_file()
    return finished >= 0 and failure > finished and reported == rounds and saved


def run_simulator(job: Path, workspace: Path, threads: int, log_path: Path, cpu_threads: Optional[int] = None,
                  on_round: Optional[Callable[[int], None]] = None, rounds: Optional[int] = None,
                  cancel: Optional[threading.Event] = None, niceness: int = 0) -> float:
    """Run the NVFlare simulator on ``job``; ``on_round(n)`` reports the number of finished rounds (read
    from the server's fedfms_rounds.json). Returns seconds taken; StepError if it fails or writes no
    round report. The simulator's run folder is ``workspace/server/simulate_job``. ``cpu_threads``: OpenMP
    threads of the simulator process (default: cores / threads, so the simulated sites share the cores).
    ``cancel``: once set (by another thread), the simulator is stopped and StepError raised within 2 s.
    ``niceness``: run the simulator and its clients at that lower CPU priority (``run_logged``).

    ``rounds``: the job's round count, for jobs without cross-site evaluation. Given, a run that NVFlare
    failed at shutdown with its late-submit error (LATE_SUBMIT_FAILURE) after all rounds were reported and
    the global model saved counts as finished, with a warning naming the log."""
    rounds_file = workspace / "server" / "simulate_job" / ROUNDS_FILE

    command = simulator_command(job, workspace, threads)

    def poll() -> None:
        if cancel is not None and cancel.is_set():
            raise StepError(f"cancelled: {shlex.join(command)} (log {log_path})")
        if on_round and rounds_file.is_file():
            with contextlib.suppress(json.JSONDecodeError, OSError):
                on_round(len(json.loads(rounds_file.read_text())))

    env = child_environment(cpu_threads or max(1, (os.cpu_count() or 1) // threads))
    # A FEDFMS_* variable of the study's shell must not override the workspace's site configuration.
    env = {k: v for k, v in env.items() if not k.startswith("FEDFMS_")}
    start = time.perf_counter()
    try:
        seconds = run_logged(command, log_path, env, poll, niceness=niceness)
    except StepError:
        if rounds is None or not _finished_before_failing(log_path, rounds_file, rounds):
            raise
        seconds = time.perf_counter() - start
        log.warning("NVFlare's simulator failed after training had finished (all %d rounds reported, global model "
                    "saved): %r at shutdown, a known NVFlare 2.9 race; the results are complete. Log: %s",
                    rounds, LATE_SUBMIT_FAILURE, log_path)
    if not rounds_file.is_file():
        raise StepError(f"the simulator exited without a round report ({rounds_file}); see {log_path}")
    poll()
    return seconds
