#!/usr/bin/env python
"""Write NVFlare job folders for every federated method (fedfms.orchestration.jobs.JobSettings).

    python tools/make_jobs.py                    # regenerate jobs/: every federated method x dataset, paper settings
    python tools/make_jobs.py --model-type vit_l --out jobs_vitl   # every option applies to all jobs written
    python tools/make_jobs.py --check            # exit 1 if jobs/ differs from what the generator writes
    python tools/make_jobs.py --method fedmsa --dataset prostate --held-out UCL \\
        --model-type vit_l --rounds 100 --out my_jobs          # one customised job (my_jobs/fedmsa_prostate)

Data paths, SAM checkpoints and devices are never written into a job: each site sets them in its
workspace's local/fedfms_site.json or with FEDFMS_DATA_ROOT / FEDFMS_SAM_CHECKPOINT / FEDFMS_DEVICE.
Defaults come from fedfms.registry (the paper profile) and JobSettings.
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

from fedfms.orchestration.jobs import JobSettings, paper_jobs, write_job
from fedfms.registry import PAPER, dataset_names, method_names
from fedfms.runtime.aggregation import AGGREGATIONS

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
    parser.add_argument("--rounds", type=int, default=PAPER.rounds, help="federated rounds (default: %(default)s, the paper's)")
    parser.add_argument("--local-epochs", type=int, default=PAPER.local_epochs,
                        help="local epochs per round (default: %(default)s, the paper's)")
    parser.add_argument("--model-type", default=PAPER.model_type,
                        help="SAM encoder: vit_b (default, the paper's), vit_l (FedMSA-L), vit_h, vit_tiny")
    parser.add_argument("--image-size", type=int,
                        help="input size, a multiple of 16 (default: 1024 for SAM as in the paper, the bundle's otherwise)")
    parser.add_argument("--batch-size", type=int, help="default: the paper's for the method and dataset")
    parser.add_argument("--learning-rate", type=float, help="default: the bundle's (the paper's Adam 1e-4); nnU-Net keeps its own SGD 1e-2")
    parser.add_argument("--min-clients", type=int, help="default: all training sites but one")
    parser.add_argument("--wait-time-after-min-received", type=int, default=_job_default("wait_time_after_min_received"),
                        help="seconds the server still waits for the last sites of a round (default: %(default)s)")
    parser.add_argument("--train-timeout", type=int, default=_job_default("train_timeout"),
                        help="seconds per site and round, 0 = no limit (default: %(default)s)")
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
    parser.add_argument("--half-precision", action="store_true", help="send models as float16 both ways (half the bytes)")
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
    profile = PAPER.override(rounds=args.rounds, local_epochs=args.local_epochs, model_type=args.model_type,
                             image_size=args.image_size, batch_size=args.batch_size, learning_rate=args.learning_rate)
    jobs = [JobSettings(method, dataset, profile, held_out=tuple(args.held_out), min_clients=args.min_clients,
                        wait_time_after_min_received=args.wait_time_after_min_received, train_timeout=args.train_timeout,
                        reject_bad_updates=args.reject_bad_updates, outlier_factor=args.outlier_factor,
                        aggregation=args.aggregation, fedsca_temperature=args.fedsca_temperature,
                        half_precision=args.half_precision,
                        name=args.name if len(datasets) * len(methods) == 1 else None)
            for dataset in datasets for method in methods]
    for settings in tqdm(jobs, desc="jobs", unit="job", disable=len(jobs) == 1):
        path = write_job(settings, args.out, args.bundles, embed_code=args.embed_code)
        log.info("wrote %s (train: %s; held out: %s)", path, ", ".join(settings.train_sites),
                 ", ".join(settings.held_out) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
