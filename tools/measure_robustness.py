#!/usr/bin/env python
"""Measure the robust-aggregation and differential-privacy options on the synthetic demo data.

    python tools/measure_robustness.py --out OUT                      # every variant below (CPU: ~5 min each)
    python tools/measure_robustness.py --out OUT --only clean-mean clean-median attack-median
    python tools/measure_robustness.py --out OUT --only dp-fedmsa dp-fedsam --dp-clip-norm 0.05 --dp-noise-multiplier 1.0

Each variant is a real NVFlare simulator run of the prostate job (demo profile: vit_tiny, 64 px, random
SAM weights, five sites train, UCL is held out) written by fedfms.orchestration.jobs.build_job with the
variant's JobSettings; "attack" variants add fedfms.runtime.faults filters (a site that reverses its
update and claims n_k = 1e6 from its first result). The final global model is scored on the held-out
site's test split with the bundle's evaluate workflow. OUT/results.{md,json} get one row per variant:
held-out slice Dice and 3D Dice, the last round's weighted validation Dice, the median update norm the
server saw, rejected results, and the privacy spent for DP variants. The data are SYNTHETIC.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from statistics import median

import torch
from nvflare.job_config.defs import FilterType

from fedfms.core.io import staged_directory, write_json_atomic, write_text_atomic
from fedfms.core.wire import BUNDLE_IN_APP, GLOBAL_MODEL_IN_RUN, ROUNDS_FILE
from fedfms.data.demo import make_demo_data
from fedfms.networks import write_random_sam_checkpoint
from fedfms.orchestration.demo import evaluate
from fedfms.orchestration.jobs import TASKS, JobSettings, build_job
from fedfms.orchestration.simulator import run_simulator
from fedfms.registry import get_method, get_profile
from fedfms.runtime.faults import FaultInjection, FaultTap
from fedfms.runtime.site_config import SITE_CONFIG_FILE, allow_fedfms_components

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("measure_robustness")
HELD_OUT, ATTACKER = "UCL", "I2CVB"
#: name -> (method, JobSettings overrides, attack?)
VARIANTS = {
    "clean-mean": ("fedmsa", {"clip_factor": 0.0}, False),
    "clean-clip": ("fedmsa", {"clip_factor": 3.0}, False),
    "clean-trimmed": ("fedmsa", {"clip_factor": 3.0, "robust_mean": "trimmed_mean"}, False),
    "clean-median": ("fedmsa", {"clip_factor": 3.0, "robust_mean": "median"}, False),
    "attack-mean": ("fedmsa", {"clip_factor": 0.0}, True),
    "attack-clip": ("fedmsa", {"clip_factor": 3.0}, True),
    "attack-median": ("fedmsa", {"clip_factor": 3.0, "robust_mean": "median"}, True),
    "clean-fedsam": ("fedsam", {}, False),
    "dp-fedmsa": ("fedmsa", {"dp": True}, False),
    "dp-fedsam": ("fedsam", {"dp": True}, False),
}


def write_variant_job(settings: JobSettings, attack: bool, out: Path) -> Path:
    """The job of ``settings`` (as write_job writes it), plus the attacker's fault filters when ``attack``."""
    with tempfile.TemporaryDirectory() as scratch, staged_directory(out / settings.job_name) as staging:
        bundle = ROOT / "bundles" / get_method(settings.method).bundle / "configs"
        job = build_job(settings, bundle, Path(scratch))
        if attack:  # reverse the update and claim a huge n_k from the first result on (pinning cannot see it)
            job.to_clients(FaultTap(), filter_type=FilterType.TASK_DATA, tasks=TASKS)
            job.to_clients(FaultInjection(ATTACKER, "scale", factor=-1.0), filter_type=FilterType.TASK_RESULT, tasks=TASKS)
            job.to_clients(FaultInjection(ATTACKER, "samples", samples=1e6), filter_type=FilterType.TASK_RESULT, tasks=TASKS)
        job.export_job(str(staging))
        for item in (staging / settings.job_name).iterdir():
            item.rename(staging / item.name)
        (staging / settings.job_name).rmdir()
    return out / settings.job_name


def run_variant(name: str, out: Path, data: Path, checkpoint: Path, dp: dict) -> dict:
    method, overrides, attack = VARIANTS[name]
    overrides = dict(overrides)
    if overrides.pop("dp", False):
        overrides.update(dp)
    profile = get_profile("demo")
    settings = JobSettings(method, "prostate", profile, held_out=(HELD_OUT,), name=name, cross_site_eval=False,
                           min_clients=5, **overrides)
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    job = write_variant_job(settings, attack, folder / "jobs")
    workspace = folder / "workspace"
    allow_fedfms_components(workspace / "local")
    write_json_atomic(workspace / "local" / SITE_CONFIG_FILE,
                      {"data_root": str(data), "sam_checkpoint": str(checkpoint), "device": "cpu"})
    seconds = run_simulator(job, workspace, 5, folder / "simulator.log")
    server = workspace / "server" / "simulate_job"
    history = json.loads((server / ROUNDS_FILE).read_text())
    bundle = job / "app" / BUNDLE_IN_APP
    evaluation = {**settings.bundle_overrides(), "sam_checkpoint": str(checkpoint), "device": "cpu"}
    evaluation.pop("batch_size")
    torch.set_num_threads(1)
    with open(folder / "evaluation.log", "w") as eval_log:
        scores = evaluate(bundle, data / "prostate" / HELD_OUT / "datalist.json", server / GLOBAL_MODEL_IN_RUN,
                          folder / "evaluation", evaluation, eval_log)
    norms = [n for r in history for n in (r.get("aggregation") or {}).get("update_norms", {}).values()]
    epsilons = [v["dp_epsilon"] for v in history[-1]["sites"].values() if "dp_epsilon" in v]
    return {"variant": name, "method": method, "attack": attack, "settings": overrides,
            "held_out_dice": scores["dice"], "held_out_dice_3d": scores["dice_3d"],
            "last_weighted_val_dice": history[-1]["weighted_val_dice"],
            "median_update_norm": median(norms) if norms else None,
            "rejected": sorted({s for r in history for s in r["rejected"]}),
            "epsilon": max(epsilons) if epsilons else None, "simulator_s": round(seconds, 1)}


def markdown(rows: list) -> str:
    fmt = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    keys = ["variant", "method", "settings", "held_out_dice", "held_out_dice_3d", "last_weighted_val_dice",
            "median_update_norm", "rejected", "epsilon", "simulator_s"]
    lines = ["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="variants to run (default: all)")
    parser.add_argument("--dp-clip-norm", type=float, default=0.05, help="dp-* variants: L2 clip norm (default: %(default)s)")
    parser.add_argument("--dp-noise-multiplier", type=float, default=1.0,
                        help="dp-* variants: noise std / clip norm (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the synthetic data and random SAM weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out.resolve()
    data = out / "data"
    if not (data / "prostate" / HELD_OUT / "datalist.json").is_file():
        make_demo_data(data, seed=args.seed)
    checkpoint = write_random_sam_checkpoint(out / "sam_vit_tiny_random.pth", "vit_tiny", args.seed)
    dp = {"dp_clip_norm": args.dp_clip_norm, "dp_noise_multiplier": args.dp_noise_multiplier}
    results_file = out / "results.json"
    rows = {r["variant"]: r for r in json.loads(results_file.read_text())} if results_file.is_file() else {}
    for name in args.only or list(VARIANTS):
        log.info("variant %s ...", name)
        rows[name] = run_variant(name, out, data, checkpoint, dp)
        log.info("%s", rows[name])
        write_json_atomic(results_file, list(rows.values()))
        write_text_atomic(out / "results.md", "Command: " + " ".join(sys.argv) + " (SYNTHETIC data, random SAM weights)\n\n"
                          + markdown(list(rows.values())))
    print(markdown(list(rows.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
