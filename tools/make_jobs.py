#!/usr/bin/env python
"""Write NVFlare job folders for every federated method (fedfms.orchestration.jobs.JobSettings).

    python tools/make_jobs.py                    # regenerate jobs/: every federated method x dataset, paper settings
    python tools/make_jobs.py --model-type vit_l --out jobs_vitl   # every option applies to all jobs written
    python tools/make_jobs.py --check            # exit 1 if jobs/ differs from what the generator writes
    python tools/make_jobs.py --method fedmsa --dataset prostate --held-out UCL \\
        --model-type vit_l --rounds 100 --out my_jobs          # one customised job (my_jobs/fedmsa_prostate)
    python tools/make_jobs.py --method fednnunet --dataset prostate --held-out UCL --profile demo \\
        --rounds 1 --no-cross-site-eval --out small_jobs       # a CPU-sized job for the demo data

Data paths, SAM checkpoints and devices are never written into a job: each site sets them in its
workspace's local/fedfms_site.json or with FEDFMS_DATA_ROOT / FEDFMS_SAM_CHECKPOINT / FEDFMS_DEVICE.
Defaults come from fedfms.registry (a profile, the paper's unless --profile says otherwise) and JobSettings.
"""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import logging
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from fedfms.networks.configs import ENCODER_CONFIGS
from fedfms.orchestration.jobs import JobSettings, paper_jobs, write_job
from fedfms.orchestration.transfer import add_transfer_arguments, transfer_settings
from fedfms.registry import (PAPER, add_compute_options, add_profile_option, compute_overrides, dataset_names,
                             get_profile, method_names)
from fedfms.runtime.aggregation import AGGREGATIONS, ROBUST_MEANS

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("make_jobs")


def differences(expected: Path, actual: Path) -> list[str]:
    """Relative paths that differ between two folder trees (missing, extra or different content)."""
    found: list[str] = []

    def walk(cmp: filecmp.dircmp, prefix: str) -> None:
        found.extend(prefix + name for name in cmp.left_only + cmp.right_only + cmp.funny_files)
        _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
        found.extend(prefix + name for name in mismatch + errors)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(expected, actual, ignore=["__pycache__"]), "")
    return sorted(found)


def _job_default(name: str) -> object:
    """JobSettings' default of field ``name`` (shown in --help, never repeated here)."""
    return next(f.default for f in dataclasses.fields(JobSettings) if f.name == name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "jobs", help="folder to write the job folders into")
    parser.add_argument("--bundles", type=Path, default=ROOT / "bundles", help="the repository's bundles/ folder")
    parser.add_argument("--check", action="store_true", help="compare --out with the paper job suite, write nothing")
    parser.add_argument("--method", choices=method_names(federated=True), help="only this method (default: all)")
    parser.add_argument("--dataset", choices=dataset_names(), help="only this dataset (default: all)")
    parser.add_argument("--held-out", nargs="*", default=[], metavar="SITE", help="sites that only evaluate")
    add_profile_option(parser)
    parser.add_argument("--rounds", type=int, help=f"federated rounds (default: the profile's; paper: {PAPER.rounds})")
    parser.add_argument("--local-epochs", type=int,
                        help=f"local epochs per round (default: the profile's; paper: {PAPER.local_epochs})")
    parser.add_argument("--model-type",
                        help=f"SAM architecture: {', '.join(ENCODER_CONFIGS)}; vit_l is FedMSA-L (default: the profile's; paper: "
                             f"{PAPER.model_type})")
    parser.add_argument("--image-size", type=int,
                        help="input size, a multiple of 16 (default: the profile's; paper: 1024 for SAM, the bundle's otherwise)")
    parser.add_argument("--batch-size", type=int, help="default: the profile's (paper: the paper's for the method and dataset)")
    parser.add_argument("--learning-rate", type=float,
                        help="default: the profile's (paper: the bundle's, Adam 1e-4); nnU-Net keeps its own SGD 1e-2")
    parser.add_argument("--min-clients", type=int, help="default: all training sites but one")
    parser.add_argument("--wait-time-after-min-received", type=int, default=_job_default("wait_time_after_min_received"),
                        help="seconds the server still waits for the last sites of a round (default: %(default)s)")
    parser.add_argument("--train-timeout", type=int, default=_job_default("train_timeout"),
                        help="seconds a round may take before the server aggregates what it has, 0 = no limit "
                             "(default: %(default)s)")
    parser.add_argument("--no-cross-site-eval", dest="cross_site_eval", action="store_false",
                        help="end the job after training (default: score the final and best global models on every "
                             "site's test split)")
    parser.add_argument("--cross-site-eval-timeout", type=int, default=_job_default("cross_site_eval_timeout"),
                        help="seconds the server waits for each model's cross-site scores (default: %(default)s)")
    parser.add_argument("--name", help="job folder name (default METHOD_DATASET)")
    parser.add_argument("--no-reject-bad-updates", dest="reject_bad_updates", action="store_false",
                        help="aggregate every result (NVFlare's plain FedAvg aggregator); default: the server rejects "
                             "non-finite, misshapen and outlier updates")
    parser.add_argument("--outlier-factor", type=float, default=_job_default("outlier_factor"),
                        help="reject an update farther from the global model than this x the round's median "
                             "(0 = off; default: %(default)s)")
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default=_job_default("aggregation"),
                        help="fedavg (the paper's, default) or fedsca (similarity-guided weights, our interpretation)")
    parser.add_argument("--fedsca-temperature", type=float, default=_job_default("fedsca_temperature"),
                        help="FedSCA softmax temperature (default: %(default)s)")
    parser.add_argument("--max-samples", type=int, default=_job_default("max_samples"),
                        help="reject results reporting more training samples n_k than this (0 = no bound; "
                             "default: %(default)s)")
    parser.add_argument("--clip-factor", type=float, default=_job_default("clip_factor"),
                        help="clip update L2 norms to this x the median accepted norm of the last rounds "
                             "(0 = off; default: %(default)s)")
    parser.add_argument("--robust-mean", choices=ROBUST_MEANS, default=_job_default("robust_mean"),
                        help="mean (n_k-weighted FedAvg), trimmed_mean or median, per coordinate (default: %(default)s)")
    parser.add_argument("--trim", type=int, default=_job_default("trim"),
                        help="values dropped on each side by --robust-mean trimmed_mean (default: %(default)s)")
    parser.add_argument("--resume-from", metavar="RUN_FOLDER",
                        help="continue a job lost to a server crash: the crashed job's server run folder "
                             "(absolute path on the server, WORKSPACE/JOB_ID)")
    parser.add_argument("--dp-clip-norm", type=float, default=_job_default("dp_clip_norm"),
                        help="differential privacy: clip each site update to this L2 norm and add Gaussian noise "
                             "(0 = off; default: %(default)s)")
    parser.add_argument("--dp-noise-multiplier", type=float, default=_job_default("dp_noise_multiplier"),
                        help="noise std / clip norm (default: %(default)s)")
    parser.add_argument("--dp-delta", type=float, default=_job_default("dp_delta"),
                        help="delta of the reported (epsilon, delta) (default: %(default)s)")
    add_compute_options(parser)
    add_transfer_arguments(parser)  # --half-precision, --compression, --topk-fraction, --partial-upload-blocks, ...
    parser.add_argument("--embed-code", action="store_true",
                        help="copy the fedfms package into the job's app/custom (sites without fedfms installed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("nvflare").setLevel(logging.WARNING)  # components log their settings when built

    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            for settings in paper_jobs():
                write_job(settings, Path(tmp), args.bundles)
            diff = differences(Path(tmp), args.out)
        if diff:
            log.error("%s is out of date with tools/make_jobs.py (%d differences, e.g. %s); run: python tools/make_jobs.py",
                      args.out, len(diff), ", ".join(diff[:5]))
            return 1
        log.info("%s matches the generator", args.out)
        return 0

    datasets = [args.dataset] if args.dataset else dataset_names()
    methods = [args.method] if args.method else method_names(federated=True)
    if args.held_out and len(datasets) > 1:
        parser.error("--held-out names sites of one dataset: give --dataset")
    if args.resume_from and len(datasets) * len(methods) > 1:
        parser.error("--resume-from continues one job: give --method and --dataset")
    profile = get_profile(args.profile).override(rounds=args.rounds, local_epochs=args.local_epochs, model_type=args.model_type,
                             image_size=args.image_size, batch_size=args.batch_size, learning_rate=args.learning_rate,
                             **compute_overrides(args))
    jobs = [JobSettings(method, dataset, profile, held_out=tuple(args.held_out), min_clients=args.min_clients,
                        wait_time_after_min_received=args.wait_time_after_min_received, train_timeout=args.train_timeout,
                        cross_site_eval=args.cross_site_eval, cross_site_eval_timeout=args.cross_site_eval_timeout,
                        reject_bad_updates=args.reject_bad_updates, outlier_factor=args.outlier_factor,
                        aggregation=args.aggregation, fedsca_temperature=args.fedsca_temperature,
                        half_precision=args.half_precision, max_samples=args.max_samples, clip_factor=args.clip_factor,
                        robust_mean=args.robust_mean, trim=args.trim, resume_from=args.resume_from,
                        dp_clip_norm=args.dp_clip_norm, dp_noise_multiplier=args.dp_noise_multiplier,
                        dp_delta=args.dp_delta, **transfer_settings(args),
                        name=args.name if len(datasets) * len(methods) == 1 else None)
            for dataset in datasets for method in methods]
    for settings in tqdm(jobs, desc="jobs", unit="job", disable=len(jobs) == 1):
        path = write_job(settings, args.out, args.bundles, embed_code=args.embed_code)
        log.info("wrote %s (train: %s; held out: %s)", path, ", ".join(settings.train_sites),
                 ", ".join(settings.held_out) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
