#!/usr/bin/env python
"""Reproduce the paper's study: leave-one-site-out training and evaluation of FedSAM, FedMSA, FedU-Net,
FednnU-Net and their centralized counterparts, with tables and plots beside the paper's Table 1.

    python tools/run_study.py --dataset prostate --data-root DATA --out OUT --sam-checkpoint sam_vit_b_01ec64.pth
    python tools/run_study.py --dataset prostate --data-root demo/ --out study --profile demo --held-out UCL

For every held-out site (--held-out SITE ..., default every site in turn = --all-sites), each method
trains on the other sites: federated methods (fedunet, fednnunet, fedsam, fedmsa) as an NVFlare simulator job
written by fedfms.orchestration.jobs.write_job with that site held out (fednnunet: the sites' nnU-Net
fingerprints merged, one plan, then training); centralized ones (unet, nnunet, sam, msa) with the bundle's
train config on the pooled source datalists (rounds x epochs epochs; nnunet plans on the pooled sites). Every trained model
is evaluated with the bundle's evaluate workflow on the test split of the held-out site (the headline
number) and of the source sites. --no-pretraining adds the -PT ablation (random SAM weights).

Output: OUT/runs/<run>/ (record.json, logs, models; written atomically, --resume skips finished runs),
OUT/results.{md,csv,json}, OUT/plots/dice_<site>.png, OUT/plots/learning_curves.png, OUT/study.log.
Exit code 0 if every run finished, 1 if some failed (listed at the end), 2 for bad arguments or data.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
from pathlib import Path

from fedfms.networks.configs import ENCODER_CONFIGS
from fedfms.registry import add_compute_options, add_profile_option, compute_overrides, dataset_names, get_profile, method_names
from fedfms.study import StudyError, StudySettings, run_study

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=dataset_names(), help="prepared dataset under --data-root")
    parser.add_argument("--data-root", type=Path, required=True, help="folder holding DATASET/SITE/datalist.json")
    parser.add_argument("--out", type=Path, required=True, help="study output folder")
    parser.add_argument("--methods", nargs="+", default=method_names(), choices=method_names(), metavar="METHOD",
                        help=f"methods to run (default all: {' '.join(method_names())})")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--held-out", nargs="+", default=[], metavar="SITE", help="unseen sites (site folder names)")
    where.add_argument("--all-sites", action="store_true", help="every site in turn (the default)")
    parser.add_argument("--no-pretraining", action="store_true",
                        help="also run the -PT ablation (SAM weights not from --sam-checkpoint)")
    parser.add_argument("--sam-checkpoint", type=Path, help="official SAM weights (default: none, random weights = -PT)")
    add_profile_option(parser)
    parser.add_argument("--model-type", help=f"SAM architecture ({', '.join(ENCODER_CONFIGS)}); default from the profile")
    parser.add_argument("--image-size", type=int, help="input size (multiple of 16); default from the profile")
    parser.add_argument("--rounds", type=int, help="federated rounds; default from the profile")
    parser.add_argument("--epochs", type=int, help="local epochs per round (centralized: rounds x epochs); default from the profile")
    parser.add_argument("--batch-size", type=int, help="default from the profile (paper: the paper's per method and dataset)")
    parser.add_argument("--learning-rate", type=float, help="default: from the profile (paper: Adam 1e-4); nnU-Net keeps its own SGD 1e-2")
    parser.add_argument("--checkpoint", choices=["best", "final"],
                        help="evaluate the best model by source-site validation Dice or the final one (default from the profile)")
    parser.add_argument("--cpu-threads", type=int, help="OpenMP threads per training/evaluation process (default from the profile)")
    add_compute_options(parser)
    parser.add_argument("--threads", type=int, help="simulator threads (default: one per training site; the held-out site gets no client)")
    parser.add_argument("--device", help="torch device for every run (default: cuda:0 if available, else cpu)")
    parser.add_argument("--resume", action="store_true", help="skip runs that finished earlier with the same settings")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace, command: str) -> StudySettings:
    """StudySettings from the profile, overridden by the options given."""
    checkpoint = args.sam_checkpoint.resolve() if args.sam_checkpoint else None
    if checkpoint is not None and not checkpoint.is_file():
        raise StudyError(f"--sam-checkpoint {checkpoint} does not exist")
    profile = get_profile(args.profile).override(
        model_type=args.model_type, image_size=args.image_size, rounds=args.rounds, local_epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, cpu_threads=args.cpu_threads,
        checkpoint=args.checkpoint, **compute_overrides(args))
    return StudySettings(
        dataset=args.dataset, data_root=args.data_root.resolve(), out=args.out.resolve(), methods=tuple(args.methods),
        profile=profile, held_out=tuple(args.held_out), no_pretraining=args.no_pretraining, sam_checkpoint=checkpoint,
        threads=args.threads, device=args.device, command=command,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)])
    try:
        settings = settings_from_args(args, command)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings.out.mkdir(parents=True, exist_ok=True)
    # The study's own logger only (not the root logger): the children log into their own files.
    log = logging.getLogger("fedfms.study")
    handlers = [logging.StreamHandler(), logging.FileHandler(settings.out / "study.log")]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        outcome = run_study(settings, ROOT / "bundles", resume=args.resume, progress=not args.quiet)
    except StudyError as err:
        log.error("error: %s", err)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept in OUT/runs; continue with --resume", file=sys.stderr)
        return 130
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
    print("\n" + (settings.out / "results.md").read_text())
    if outcome.failures:
        print("FAILED runs: " + ", ".join(f"{r['name']} ({r['error'].splitlines()[0]})" for r in outcome.failures))
    print(f"wrote {', '.join(str(p) for p in outcome.files)} ({outcome.seconds:.0f} s)")
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up like Ctrl-C (staging folder, children)
    sys.exit(main())
