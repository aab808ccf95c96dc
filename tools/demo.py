#!/usr/bin/env python
"""The fedfms demo: real NVFlare federated FedMSA jobs on synthetic multi-site prostate MRI, from
pretrained and from random SAM weights (the paper's -PT ablation), side by side.

    python tools/demo.py --out OUT [--sam-checkpoint sam_vit_b_01ec64.pth --model-type vit_b]

1. writes the synthetic six-site prostate data (tools/make_demo_data.py) to OUT/data;
2. writes the FedMSA prostate job with the demo profile (vit_nano, 128 px, 4 rounds; five sites
   train, the sixth is held out as in leave-one-site-out) to OUT/jobs, from the same generator and
   code as jobs/fedmsa_prostate;
3. runs it twice in the NVFlare simulator (OUT/pretrained/, OUT/random/: workspace, simulator.log,
   models), every site reading its data and SAM weights from the workspace's local/fedfms_site.json:
   from seeded random weights, in the background at a lower CPU priority, and from pretrained weights
   (OUT/weights): without --sam-checkpoint a STAND-IN for SAM's SA-1B weights, the tiny SAM pretrained
   by fedfms on synthetic shapes (not on medical images; pretrained beside the random run the first
   time, then reused from ~/.cache/fedfms or $FEDFMS_CACHE_DIR);
4. evaluates the initial and the final global model of each run, as soon as it ends, on every site's
   test split, the held-out site included, with the MSA bundle's evaluate workflow;
5. writes OUT/summary.md, OUT/summary.json, OUT/learning_curve.png (both runs) and OUT/overlays.png
   (held-out slices: image, ground truth, predictions before and after federation of both runs).
The data are synthetic, and so is the stand-in's pretraining: the numbers show the federated pipeline,
not SAM's quality on real data. What they show is the paper's -PT point in miniature: FedMSA from the
stand-in learns the held-out site, from random weights it ends with one blob where the gland usually
lies (README, 'The demo', gives the measured table).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fedfms.orchestration.demo import DemoOptions, run_demo
from fedfms.orchestration.transfer import add_transfer_arguments, transfer_settings
from fedfms.registry import add_compute_options, compute_overrides

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    defaults = DemoOptions()
    profile = defaults.profile
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (data, job, workspace, summary)")
    parser.add_argument("--sam-checkpoint", type=Path, help="an official SAM checkpoint for the pretrained run (default: the stand-in pretrained on synthetic shapes)")
    parser.add_argument("--model-type", default=profile.model_type,
                        help="SAM architecture (default: %(default)s); vit_b with sam_vit_b_01ec64.pth")
    parser.add_argument("--image-size", type=int, default=profile.image_size, help="input size, a multiple of 16 (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=profile.rounds, help="federated rounds (default: %(default)s)")
    parser.add_argument("--local-epochs", type=int, default=profile.local_epochs,
                        help="local epochs per round (default: %(default)s; the paper's: 1)")
    parser.add_argument("--batch-size", type=int, default=profile.batch_size, help="training batch size (default: %(default)s)")
    parser.add_argument("--held-out", default=defaults.held_out,
                        help="the site that never trains, leave-one-site-out (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=profile.learning_rate,
                        help="default %(default)s so a few rounds show learning (the paper and jobs/: 1e-4)")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="simulator threads: clients run in parallel (default: one per training site)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the synthetic data, the stand-in's pretraining and the random SAM weights (default: %(default)s)")
    add_compute_options(parser)
    add_transfer_arguments(parser)  # --compression int8 --topk-fraction 0.2 ...: how the models travel
    args = parser.parse_args(argv)
    # force: an import above already gave the root logger a WARNING-level handler, which hid the steps
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    # MONAI warns at every NumpyReader it builds that its GPU DICOM codec is missing; the demo reads no DICOM
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    options = DemoOptions(
        sam_checkpoint=args.sam_checkpoint, held_out=args.held_out, threads=args.threads, seed=args.seed,
        transfer=transfer_settings(args),
        profile=profile.override(model_type=args.model_type, image_size=args.image_size, rounds=args.rounds,
                                 local_epochs=args.local_epochs, batch_size=args.batch_size,
                                 learning_rate=args.learning_rate,
                                 **compute_overrides(args)))
    result = run_demo(args.out, options, ROOT / "bundles")
    print("\n" + result["table"])
    print("\n".join(result["notes"]))
    print("\nwrote " + ", ".join(map(str, result["files"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
