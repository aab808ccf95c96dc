"""Executing one run of the study (train, then evaluate on every site) into OUT/runs/<name>/.

A run works in a hidden staging folder ``OUT/runs/.<name>.tmp-*`` and is renamed into place when it
ends, finished or failed (``fedfms.core.io.staged_directory``), so ``OUT/runs/<name>/record.json`` is always complete:

    record.json          status ("finished" | "failed"), settings, the exact commands, metrics, timings, error
    train.log / simulator.log / evaluate.log     each child process's output
    train/               centralized: the bundle's output_dir (model.pt = best validation Dice, model_final.pt)
    job/, workspace/     federated: the NVFlare job and the simulator workspace (server/simulate_job/...)
    history.json, learning_curve.png             federated: per-round records of the server
    eval/                evaluation_summary.json and per-sample CSV of the bundle's evaluate workflow
"""

from __future__ import annotations

import json
import logging
import shlex
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from fedfms.core.io import staged_directory, write_json_atomic
from fedfms.core.wire import EVALUATE_CONFIG, ROUNDS_FILE, TRAIN_CONFIG
from fedfms.networks import write_random_sam_checkpoint
from fedfms.orchestration.jobs import JobSettings, client_name, write_job
from fedfms.orchestration.simulator import child_environment, run_logged, run_simulator, simulator_command
from fedfms.registry import bundle_overrides, get_dataset
from fedfms.reporting.federation import plot_learning_curve
from fedfms.runtime.site_config import SITE_CONFIG_FILE, allow_fedfms_components

from .commands import bundle_command
from .plan import StudyRun, StudySettings

log = logging.getLogger("fedfms.study")

RECORD = "record.json"
FINISHED, FAILED = "finished", "failed"
TRAIN_CONFIGS, EVALUATE_CONFIGS = [TRAIN_CONFIG], [TRAIN_CONFIG, EVALUATE_CONFIG]
#: Which trained model is evaluated: file of a centralized run's output_dir / of the NVFlare server.
MODEL_FILES = {"best": ("model.pt", "best_FL_global_model.pt"), "final": ("model_final.pt", "FL_global_model.pt")}


@dataclass(frozen=True)
class RunContext:
    """What every run of a study shares: the settings, the repository's bundles/ folder, the study's
    command line, and a progress callback (stage text) for the progress bar."""

    settings: StudySettings
    bundles_dir: Path
    progress: Callable[[str], None] = lambda stage: None


def read_record(run_dir: Path) -> Optional[dict]:
    """The record of a published run, or None if there is none (or it is unreadable)."""
    try:
        return json.loads((run_dir / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_reusable(record: Optional[dict], run: StudyRun) -> bool:
    """--resume skips a run whose record finished with exactly the planned settings."""
    return bool(record) and record.get("status") == FINISHED and record.get("settings") == run.settings


def job_settings(run: StudyRun, settings: StudySettings) -> JobSettings:
    """The NVFlare job of a federated ``run``: every site in the deploy map, the held-out site evaluating
    only, the server waiting for every source site each round, no NVFlare cross-site evaluation (the
    study evaluates every model the same way, with the bundle's evaluate workflow)."""
    return JobSettings(
        run.method.name, settings.dataset, settings.profile, sites=tuple(s.folder for s in run.evaluated),
        held_out=(run.held_out.folder,), min_clients=len(run.sources), cross_site_eval=False,
        name=client_name(f"{run.method.name}_{settings.dataset}_{run.held_out.folder}"))


def sam_weights(run: StudyRun, settings: StudySettings) -> Optional[Path]:
    """SAM checkpoint a run builds on: the official one when pretrained; for -PT a shared seeded
    random-init file if federated (participants must agree), None (the bundle's random init) if central."""
    if not run.method.uses_sam:
        return None
    if run.pretrained:
        return settings.sam_checkpoint
    if run.method.federated:
        model_type = settings.profile.model_type
        return write_random_sam_checkpoint(settings.out / "weights" / f"sam_{model_type}_random_seed{settings.seed}.pth",
                                           model_type, settings.seed)
    return None


def _bundle_overrides(run: StudyRun, settings: StudySettings, checkpoint: Optional[Path]) -> Dict[str, object]:
    """The bundle overrides of a run's training (centralized) and evaluation: those of its federated job
    (``fedfms.registry.bundle_overrides``), so both kinds of run compare like with like."""
    overrides = bundle_overrides(run.method, get_dataset(settings.dataset), settings.profile)
    if run.method.uses_sam and checkpoint is not None:
        overrides["sam_checkpoint"] = str(checkpoint)
    if settings.device:
        overrides["device"] = settings.device
    return overrides


def _train_federated(run: StudyRun, ctx: RunContext, stage: Path, checkpoint: Optional[Path], record: dict) -> Path:
    """Write the job, configure a simulator workspace like a site would, run the simulator; return the
    global model file to evaluate."""
    settings = ctx.settings
    job_set = job_settings(run, settings)
    job = write_job(job_set, stage / "job", ctx.bundles_dir)
    workspace = stage / "workspace"
    allow_fedfms_components(workspace / "local")
    # No device given: each site's default (cuda:0 if available, else cpu).
    site = {"data_root": str(settings.data_root), "sam_checkpoint": str(checkpoint) if checkpoint else None,
            "device": settings.device}
    write_json_atomic(workspace / "local" / SITE_CONFIG_FILE, {k: v for k, v in site.items() if v})
    threads = settings.threads or len(job_set.deployed_sites)
    command = simulator_command(job, workspace, threads)
    record["commands"].append({"step": "train", "job": f"fedfms.orchestration.jobs.write_job({job_set!r})",
                               "site_config": site, "command": shlex.join(command)})
    rounds = settings.profile.rounds
    ctx.progress(f"simulator 0/{rounds} rounds")
    seconds = run_simulator(job, workspace, threads, stage / "simulator.log", settings.profile.cpu_threads,
                            on_round=lambda n: ctx.progress(f"simulator {n}/{rounds} rounds"), rounds=rounds)
    record["seconds"]["train"] = round(seconds, 1)
    server = workspace / "server" / "simulate_job"
    history = json.loads((server / ROUNDS_FILE).read_text())
    record["history"] = history
    write_json_atomic(stage / "history.json", history)
    if history:
        plot_learning_curve(history, stage / "learning_curve.png",
                            title=f"{run.label}, {run.held_out.folder} held out")
    return server / "app_server" / MODEL_FILES[settings.profile.checkpoint][1]


def _train_centralized(run: StudyRun, ctx: RunContext, stage: Path, checkpoint: Optional[Path], record: dict) -> Path:
    """Train the bundle on the pooled source datalists for rounds x local_epochs epochs; return the model."""
    settings = ctx.settings
    bundle = ctx.bundles_dir / run.method.bundle
    overrides = {**_bundle_overrides(run, settings, checkpoint), "datalist": [str(p) for p in run.training_datalists],
                 "output_dir": str(stage / "train"), "max_epochs": settings.profile.rounds * settings.profile.local_epochs}
    command = bundle_command(bundle, "", TRAIN_CONFIGS, overrides)
    record["commands"].append({"step": "train", "command": shlex.join(command)})
    ctx.progress(f"training {overrides['max_epochs']} epochs")
    record["seconds"]["train"] = round(run_logged(command, stage / "train.log", child_environment(settings.profile.cpu_threads)), 1)
    return stage / "train" / MODEL_FILES[settings.profile.checkpoint][0]


def _scores(summary: dict) -> Dict[str, object]:
    keys = ("dice", "iou", "dice_3d", "num_slices", "num_volumes", "per_channel")
    return {k: summary[k] for k in keys if k in summary}


def _evaluate(run: StudyRun, ctx: RunContext, stage: Path, model: Path, checkpoint: Optional[Path], record: dict) -> dict:
    """The bundle's evaluate workflow on the test split of every site (held-out first, pooled in one call:
    the summary reports each site); returns {"held_out": scores, "sources": {site: scores}}."""
    if not model.is_file():
        raise FileNotFoundError(f"the trained model {model} was not written (checkpoint choice {ctx.settings.profile.checkpoint!r})")
    bundle = ctx.bundles_dir / run.method.bundle
    overrides = {**_bundle_overrides(run, ctx.settings, checkpoint), "datalist": [str(s.datalist) for s in run.evaluated],
                 "ckpt_path": str(model), "output_dir": str(stage / "eval")}
    command = bundle_command(bundle, "evaluate", EVALUATE_CONFIGS, overrides)
    record["commands"].append({"step": "evaluate", "command": shlex.join(command)})
    ctx.progress(f"evaluating on {len(run.evaluated)} sites")
    record["seconds"]["evaluate"] = round(run_logged(command, stage / "evaluate.log", child_environment(ctx.settings.profile.cpu_threads)), 1)
    summary = json.loads((stage / "eval" / "evaluation_summary.json").read_text())
    per_site = summary.get("per_site", {})
    missing = [s.name for s in run.evaluated if s.name not in per_site]
    if missing:
        raise KeyError(f"{stage / 'eval' / 'evaluation_summary.json'}: no per-site results for {missing}")
    return {"held_out": _scores(per_site[run.held_out.name]),
            "sources": {s.name: _scores(per_site[s.name]) for s in run.sources}}


def _relative(record: dict, stage: Path, target: Path) -> dict:
    """Paths inside the staging folder as they will be after the rename (commands, model file)."""
    return json.loads(json.dumps(record).replace(str(stage), str(target)))


def execute_run(run: StudyRun, ctx: RunContext) -> dict:
    """Train and evaluate ``run``; publish OUT/runs/<name>/ (see the module docstring) and return its
    record. Errors of the run are caught and recorded (status "failed", error, traceback), so the study
    goes on; KeyboardInterrupt removes the staging folder and propagates."""
    settings = ctx.settings
    target = settings.out / "runs" / run.name
    record: dict = {
        "name": run.name, "status": FAILED, "method": run.method.name, "label": run.label, "paper_row": run.paper_row,
        "federated": run.method.federated, "pretrained": run.pretrained, "held_out": run.held_out.folder,
        "sources": [s.folder for s in run.sources], "settings": run.settings, "study_command": settings.command,
        "commands": [], "seconds": {}, "metrics": None, "history": None, "error": None,
    }
    start = time.perf_counter()
    # Ctrl-C (KeyboardInterrupt) leaves the block by an exception: the staging folder is dropped.
    with staged_directory(target) as stage:
        try:
            checkpoint = sam_weights(run, settings)
            record["sam_weights"] = str(checkpoint) if checkpoint else ("random init (bundle)" if run.method.uses_sam else None)
            train = _train_federated if run.method.federated else _train_centralized
            model = train(run, ctx, stage, checkpoint, record)
            record["model"] = str(model)
            record["metrics"] = _evaluate(run, ctx, stage, model, checkpoint, record)
            record["status"] = FINISHED
        except Exception as err:  # any failure of this run is recorded and the study continues
            record["error"] = f"{type(err).__name__}: {err}"
            record["traceback"] = traceback.format_exc()
            log.error("run %s failed: %s", run.name, record["error"])
        record["seconds"]["total"] = round(time.perf_counter() - start, 1)
        record = _relative(record, stage, target)
        write_json_atomic(stage / RECORD, record)
    return record
