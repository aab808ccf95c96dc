"""FednnU-Net: nnU-Net (nnunetv2) on fedfms' prepared data, as a library for bundles/nnunet and the
federated planning step. nnU-Net's own code does the work; these modules are the glue, one per concept:

- reader:       nnU-Net reader class for prepared samples (the image_size frame, 2D spacing (999, 1, 1))
- labels:       fedfms label channels <-> nnU-Net labels / regions; per-channel logits from its outputs
- dataset_json: the nnU-Net dataset.json describing prepared samples (channels, labels)
- fingerprint:  nnU-Net's dataset fingerprint of one site; the aggregate-only check of a fingerprint
- merge:        several sites' fingerprints -> one (weighted by case counts; what is exact, what not)
- planning:     nnU-Net's experiment planner run once on a fingerprint -> a plan (JSON); plan files
- environment:  nnU-Net's folder variables for one call
- recipe:       network, loss, SGD + poly schedule, training step, augmentation from an nnU-Net trainer
- data:         nnU-Net's data loader over a datalist (preprocessing on the fly)
- transforms:   nnU-Net's normalization for the evaluator's frames
- inference:    nnU-Net's sliding-window predictor as a MONAI inferer (per-channel logits)
"""

from fedfms.nnunet.data import PreparedCases, epoch_length, training_loader
from fedfms.nnunet.dataset_json import make_dataset_json
from fedfms.nnunet.fingerprint import FingerprintError, check_fingerprint, site_fingerprint
from fedfms.nnunet.inference import NnUNetInferer
from fedfms.nnunet.labels import channel_logits, channels_to_label_map, nnunet_labels
from fedfms.nnunet.merge import merge_fingerprints
from fedfms.nnunet.planning import (PLAN_FILENAME, PlanningError, check_plan, load_plan, make_plan, resolve_plan,
                                    save_plan)
from fedfms.nnunet.reader import PreparedSampleIO
from fedfms.nnunet.recipe import NnUNetRecipe, build_network, trainer_class
from fedfms.nnunet.transforms import NnUNetNormalized

__all__ = [
    "FingerprintError", "NnUNetInferer", "NnUNetNormalized", "NnUNetRecipe", "PLAN_FILENAME",
    "PlanningError", "PreparedCases", "PreparedSampleIO", "build_network", "channel_logits", "channels_to_label_map",
    "check_fingerprint", "check_plan", "epoch_length", "load_plan", "make_dataset_json", "make_plan",
    "merge_fingerprints", "nnunet_labels", "resolve_plan", "save_plan", "site_fingerprint", "trainer_class",
    "training_loader",
]
