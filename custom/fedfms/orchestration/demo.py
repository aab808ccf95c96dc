"""The fedfms demo: a real NVFlare federated FedMSA job on synthetic multi-site prostate MRI.

:func:`run_demo` (``tools/demo.py``) writes the synthetic six-site data, writes the FedMSA prostate job
with a small profile (same generator and code as ``jobs/fedmsa_prostate``), runs it in the NVFlare
simulator with every participant configured through ``local/fedfms_site.json``, then evaluates the
initial and the final global model on every site's test split (the held-out site included) with the
MSA bundle's evaluate workflow, and writes OUT/summary.{md,json} and OUT/learning_curve.png.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Optional

import torch
from tqdm import tqdm

from fedfms.core.io import copy_file_atomic, save_torch_atomic, write_json_atomic, write_text_atomic
from fedfms.core.wire import BUNDLE_IN_APP, BYTES_DOWN, BYTES_UP, EVALUATE_CONFIG, ROUNDS_FILE, TRAIN_CONFIG
from fedfms.data.demo import make_demo_data
from fedfms.networks import write_random_sam_checkpoint
from fedfms.registry import Profile, get_profile
from fedfms.reporting.federation import dice_table, plot_learning_curve
from fedfms.runtime.bundle_network import build_bundle_network
from fedfms.runtime.site_config import SITE_CONFIG_FILE, allow_fedfms_components

from .jobs import JobSettings, write_job
from .simulator import run_simulator, simulator_command

log = logging.getLogger(__name__)
MODELS = {"before": "initial global model", "after": "final global model"}


#: The study's CPU profile, with one round more so the learning curve shows a trend.
DEMO_PROFILE = get_profile("demo").override(rounds=3)


@dataclass(frozen=True)
class DemoOptions:
    """The demo's settings: the training ``profile`` (default DEMO_PROFILE: vit_tiny, 64 px, 3 rounds x 1
    local epoch, batch 4, lr 1e-3, where the jobs use the paper's 1e-4: a few rounds need more), the
    held-out site, simulator threads (None: one per site, held-out included, so no site's process is
    restarted between tasks; fewer threads than sites make NVFlare start a new client process per task:
    281-337 s instead of 181 s for the whole demo on 2 cores), the seed of the data and random SAM weights, an official SAM
    checkpoint (None: random SAM weights), and the job's transfer options (JobSettings fields of
    ``fedfms.orchestration.transfer``, e.g. {"compression": "int8", "topk_fraction": 0.2})."""

    sam_checkpoint: Optional[Path] = None
    profile: Profile = DEMO_PROFILE
    held_out: str = "UCL"
    threads: Optional[int] = None
    seed: int = 1337
    transfer: Mapping[str, object] = field(default_factory=dict)


def save_initial_model(bundle: Path, checkpoint: Path, path: Path) -> Path:
    """The global model the server starts from: the job's ``bundle`` built with the same builder and seed
    as TransmittedModelPersistor, saved like NVFlare's PTFileModelPersistor files ({"model": state_dict})."""
    network = build_bundle_network(bundle, {"sam_checkpoint": str(checkpoint), "device": "cpu"})
    return save_torch_atomic({"model": network.state_dict()}, path)


def evaluate(bundle: Path, datalist: Path, ckpt: Path, output_dir: Path, overrides: dict, log_file) -> dict:
    """Test-split Dice of ``ckpt`` on one site: the bundle's evaluate workflow, i.e. ``python -m monai.bundle
    run evaluate --config_file "['train.json','evaluate.json']" ...``, run in this process (its output goes
    to ``log_file``). Returns the slice-averaged Dice and the per-volume 3D Dice."""
    from monai.bundle import run

    logging.disable(logging.INFO)  # the workflow's own log lines would bury the demo's progress bar
    try:
        with contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
            run("evaluate", config_file=[str(bundle / TRAIN_CONFIG), str(bundle / EVALUATE_CONFIG)],
                bundle_root=str(bundle), datalist=str(datalist), ckpt_path=str(ckpt), output_dir=str(output_dir),
                **overrides)
    finally:
        logging.disable(logging.NOTSET)
    summary = json.loads((output_dir / "evaluation_summary.json").read_text())
    return {"dice": float(summary["dice"]), "dice_3d": float(summary["dice_3d"])}


def run_demo(out: Path, options: DemoOptions, bundles_dir: Path) -> dict:
    """Run the whole demo into ``out``; return {"table": markdown, "notes": [...], "files": [...]}.
    ``bundles_dir`` is the repository's bundles/ folder (the job carries a copy of bundles/msa/configs)."""
    start = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    log.info("1/4 synthetic data -> %s", out / "data")
    make_demo_data(out / "data", seed=options.seed)
    profile = options.profile
    settings = JobSettings(
        "fedmsa", "prostate", profile, held_out=(options.held_out,), name="fedmsa_prostate_demo",
        cross_site_eval=False,  # step 4 evaluates every site with the bundle's evaluate workflow instead
        **options.transfer,
    )
    settings = replace(settings, min_clients=len(settings.train_sites))  # wait for every training site each round

    if options.sam_checkpoint:
        checkpoint, weights = Path(options.sam_checkpoint).resolve(), f"SAM checkpoint {options.sam_checkpoint}"
    else:
        checkpoint = write_random_sam_checkpoint(out / f"sam_{profile.model_type}_random_seed{options.seed}.pth",
                                                 profile.model_type, options.seed)
        weights = f"RANDOM SAM weights ({checkpoint.name}, no pretrained checkpoint given)"

    log.info("2/4 job -> %s", out / "jobs" / settings.job_name)
    job = write_job(settings, out / "jobs", bundles_dir)
    workspace = out / "workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    allow_fedfms_components(workspace / "local")
    write_json_atomic(workspace / "local" / SITE_CONFIG_FILE,
                      {"data_root": str(out / "data"), "sam_checkpoint": str(checkpoint), "device": "cpu"})

    log.info("3/4 NVFlare simulator: %d rounds, training sites %s, held out %s",
             profile.rounds, ", ".join(settings.train_sites), options.held_out)
    threads = options.threads or len(settings.all_sites)
    log.info("running: %s  (log: %s)", " ".join(simulator_command(job, workspace, threads)), out / "simulator.log")
    with tqdm(total=profile.rounds, desc="federated rounds", unit="round") as bar:
        sim_seconds = run_simulator(job, workspace, threads, out / "simulator.log",
                                    on_round=lambda done: bar.update(done - bar.n), rounds=profile.rounds)
    server = workspace / "server" / "simulate_job"
    history = json.loads((server / ROUNDS_FILE).read_text())

    log.info("4/4 evaluating the global models on every site's test split -> %s", out / "evaluation")
    bundle = job / "app" / BUNDLE_IN_APP
    models_dir = out / "models"
    models_dir.mkdir(exist_ok=True)
    checkpoints = {
        "before": save_initial_model(bundle, checkpoint, models_dir / "initial_global_model.pt"),
        "after": copy_file_atomic(server / "app_server" / "FL_global_model.pt", models_dir),
    }
    copy_file_atomic(server / "app_server" / "best_FL_global_model.pt", models_dir)  # by weighted validation Dice
    overrides = {**settings.bundle_overrides(), "sam_checkpoint": str(checkpoint), "device": "cpu"}
    overrides.pop("batch_size")
    # The tiny model runs many small ops: one thread avoids OpenMP spin-waits on a shared machine.
    torch.set_num_threads(1)
    rows = []
    with open(out / "evaluation.log", "w") as eval_log, tqdm(total=len(checkpoints) * len(settings.all_sites), desc="evaluations") as bar:
        for site in settings.all_sites:
            datalist = out / "data" / "prostate" / site / "datalist.json"
            row = {"site": site, "role": "held out" if site in settings.held_out else "train",
                   "test slices": len(json.loads(datalist.read_text())["test"])}
            for key, ckpt in checkpoints.items():
                scores = evaluate(bundle, datalist, ckpt, out / "evaluation" / key / site, overrides, eval_log)
                row.update({f"{metric} {key}": value for metric, value in (("Dice", scores["dice"]), ("3D Dice", scores["dice_3d"]))})
                bar.update()
            rows.append(row)

    table = dice_table(rows, [f"{metric} {key}" for metric in ("Dice", "3D Dice") for key in MODELS])
    wall = time.perf_counter() - start
    traffic = [t for entry in history for t in entry["traffic"].values()]  # per site and round
    mean = {d: sum(t.get(d, 0) for t in traffic) / max(1, sum(d in t for t in traffic)) for d in (BYTES_UP, BYTES_DOWN)}
    notes = [
        "Data: SYNTHETIC six-site prostate MRI (fedfms.data.demo), not the real release.",
        f"before = {MODELS['before']} (round 0), after = {MODELS['after']} (after {profile.rounds} rounds).",
        f"Weights: {weights}." + ("" if options.sam_checkpoint else " With random SAM weights and a few rounds "
                                  "the model mostly learns where the gland lies: a pipeline check, not SAM's quality."),
        f"Profile: FedMSA, {profile.model_type}, {profile.image_size} px, {profile.rounds} rounds x {profile.local_epochs} local epoch(s), lr "
        f"{profile.learning_rate}; {len(settings.train_sites)} sites train, {options.held_out} is held out. "
        "Dice: test split, per 2D slice (sigmoid > 0.5) averaged over slices (an empty prediction scores 1 on "
        "the ~45% of slices without prostate); 3D Dice: per volume, averaged over volumes.",
        f"Wall time: {wall:.0f} s (simulator {sim_seconds:.0f} s).",
        f"Transfer: {dict(options.transfer) or 'whole float32 models (the paper)'}; bytes per site and round, mean "
        f"over sites and rounds: up {mean[BYTES_UP]:,.0f}, down {mean[BYTES_DOWN]:,.0f} (from the server's round report).",
        "The real thing: prepare the public release with tools/prepare_data.py, give each site its data_root "
        "and sam_vit_b_01ec64.pth in local/fedfms_site.json (or FEDFMS_DATA_ROOT / FEDFMS_SAM_CHECKPOINT), and "
        "run jobs/fedmsa_prostate (ViT-B, 1024 px, 100 rounds) on GPUs; see README, 'Federated jobs'.",
    ]
    write_text_atomic(out / "summary.md", "# fedfms demo: FedMSA on synthetic prostate MRI\n\n" + table + "\n"
                      + "\n".join(f"- {n}" for n in notes) + "\n")
    write_json_atomic(out / "summary.json", {
        "synthetic_data": True, "sam_weights": str(checkpoint), "random_sam_weights": not options.sam_checkpoint,
        "method": "fedmsa", "model_type": profile.model_type, "image_size": profile.image_size, "rounds": profile.rounds,
        "learning_rate": profile.learning_rate, "train_sites": settings.train_sites, "held_out": list(settings.held_out),
        "models": {k: str(v) for k, v in checkpoints.items()}, "sites": rows, "history": history,
        "transfer": dict(options.transfer),
        "wall_time_s": round(wall, 1), "simulator_time_s": round(sim_seconds, 1), "notes": notes,
    })
    plot_learning_curve(history, out / "learning_curve.png",
                        title=f"FedMSA demo ({profile.model_type}, synthetic data, {options.held_out} held out)")
    return {"table": table, "notes": notes, "files": [out / "summary.md", out / "summary.json", out / "learning_curve.png"]}
