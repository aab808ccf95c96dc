"""Run nnU-Net's experiment planner once on a (merged) fingerprint; read and write the resulting plan.

nnU-Net's ExperimentPlanner reads dataset.json and dataset_fingerprint.json from the folders named by
its environment variables nnUNet_raw / nnUNet_preprocessed (read when used, nnunetv2.paths). make_plan
writes both files into a temporary folder, points the two variables there for the duration of the
call (fedfms.nnunet.environment) and runs the planner unchanged but for the
reader class (fedfms.nnunet.reader). Prepared samples are 2D (shape (1, S, S), spacing (999, 1, 1)),
so nnU-Net plans its "2d" configuration only.

A fedfms plan (the file a bundle gets as `plans_file`, and what the server sends every site) is
{"format", "configuration": "2d", "image_size", "label_channels", "sites", "plans": nnU-Net's
plans dict, "dataset_json": nnU-Net's dataset.json}.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from fedfms.core.io import atomic_path
from fedfms.bundle.datalist import label_channels as datalist_label_channels
from fedfms.nnunet.dataset_json import make_dataset_json
from fedfms.nnunet.environment import nnunet_folders
from fedfms.nnunet.fingerprint import FingerprintError, check_fingerprint, site_fingerprint
from fedfms.nnunet.merge import merge_fingerprints
from fedfms.nnunet.reader import PreparedSampleIO

logger = logging.getLogger(__name__)

FORMAT = "fedfms-nnunet-plan/1"
CONFIGURATION = "2d"
DATASET_NAME = "Dataset999_fedfms"  # nnU-Net requires DatasetNNN_name; the folders are temporary
PLAN_FILENAME = "nnunet_plans.json"


class PlanningError(ValueError):
    """nnU-Net cannot plan this fingerprint, or a plan file is unusable."""


class FedfmsExperimentPlanner(ExperimentPlanner):
    """nnU-Net's default planner; only the reader of the cases is fedfms' (nnU-Net would guess it from
    an example file of a registered format)."""

    def determine_reader_writer(self) -> type[PreparedSampleIO]:
        return PreparedSampleIO


@contextmanager
def _planner_folders(fingerprint: Mapping[str, Any], dataset_json: Mapping[str, Any]) -> Iterator[None]:
    """Temporary nnUNet_raw / nnUNet_preprocessed holding this dataset.json and fingerprint."""
    with tempfile.TemporaryDirectory(prefix="fedfms_nnunet_") as tmp:
        raw, pre = os.path.join(tmp, "raw"), os.path.join(tmp, "preprocessed")
        for folder, name, content in ((raw, "dataset.json", {**dataset_json, "dataset": {}}),  # no case files needed
                                      (pre, "dataset_fingerprint.json", fingerprint)):
            os.makedirs(os.path.join(folder, DATASET_NAME))
            with open(os.path.join(folder, DATASET_NAME, name), "w") as f:
                json.dump(content, f)
        with nnunet_folders(nnUNet_raw=raw, nnUNet_preprocessed=pre):
            yield


def make_plan(fingerprint: Mapping[str, Any], gpu_memory_target_gb: float = 8.0) -> dict[str, Any]:
    """nnU-Net's 2D plan for a site or merged fingerprint (fedfms.nnunet.fingerprint / merge).

    gpu_memory_target_gb: nnU-Net's VRAM target (default 8, its own), which sets patch and batch size.
    Raises PlanningError naming the cause when the fingerprint is not valid or nnU-Net cannot plan it.
    """
    try:
        check_fingerprint(fingerprint)
    except FingerprintError as err:
        raise PlanningError(f"cannot plan: {err}") from err
    dataset_json = make_dataset_json(fingerprint["label_channels"], fingerprint["num_image_channels"],
                                     fingerprint["num_cases"])
    summary = (f"{fingerprint['num_cases']} cases of site(s) {fingerprint['site']}, image_size {fingerprint['image_size']}, "
               f"shapes after crop from {min(map(tuple, fingerprint['shapes_after_crop']))} "
               f"to {max(map(tuple, fingerprint['shapes_after_crop']))}")
    printed = io.StringIO()
    try:
        # the planner prints its configuration and the path of its temporary plans file: a debug log line
        # instead (sys.stdout is process-wide: another thread's print in these milliseconds lands there too)
        with _planner_folders(fingerprint, dataset_json), contextlib.redirect_stdout(printed):
            plans = FedfmsExperimentPlanner(DATASET_NAME, gpu_memory_target_in_gb=gpu_memory_target_gb).plan_experiment()
    except Exception as err:
        raise PlanningError(f"nnU-Net's planner failed on the fingerprint ({summary}): {type(err).__name__}: {err}") from err
    finally:
        logger.debug(printed.getvalue())
    plan = {
        "format": FORMAT,
        "configuration": CONFIGURATION,
        "image_size": fingerprint["image_size"],
        "label_channels": list(fingerprint["label_channels"]),
        "sites": dict(fingerprint.get("sites", {fingerprint["site"]: fingerprint["num_cases"]})),
        "plans": json.loads(json.dumps(plans)),  # plain JSON types (the planner already fixed numpy scalars)
        "dataset_json": dataset_json,
    }
    check_plan(plan)
    config = plan["plans"]["configurations"][CONFIGURATION]
    logger.info(f"nnU-Net 2d plan ({summary}): patch {config['patch_size']}, batch {config['batch_size']}, "
                f"{config['architecture']['arch_kwargs']['n_stages']} stages, normalization {config['normalization_schemes']}")
    return plan


def check_plan(plan: Mapping[str, Any], source: str = "plan") -> None:
    """Raise PlanningError unless `plan` is a fedfms nnU-Net plan whose 2d patch fits its image size."""
    keys = {"format", "configuration", "image_size", "label_channels", "sites", "plans", "dataset_json"}
    if not isinstance(plan, Mapping) or set(plan) != keys or plan["format"] != FORMAT:
        got = sorted(plan) if isinstance(plan, Mapping) else type(plan).__name__
        raise PlanningError(f"{source}: expected a {FORMAT} document with keys {sorted(keys)}, got {got}")
    config = plan["plans"].get("configurations", {}).get(plan["configuration"])
    if config is None:
        raise PlanningError(f"{source}: nnU-Net made no {plan['configuration']!r} configuration "
                            f"(has {sorted(plan['plans'].get('configurations', {}))})")
    patch, size = config.get("patch_size"), plan["image_size"]
    if not (isinstance(patch, list) and len(patch) == 2 and all(isinstance(p, int) and 0 < p <= size for p in patch)):
        raise PlanningError(f"{source}: the 2d patch size {patch} does not fit the {size} x {size} frame")
    stages = config.get("architecture", {}).get("arch_kwargs", {}).get("n_stages", 0)
    if stages < 2:  # no down-sampling: no decoder and no deep supervision to train
        raise PlanningError(f"{source}: nnU-Net planned a U-Net with {stages} stage(s) for patch {patch}: the cases are "
                            f"too small after cropping to their non-zero region (median shape "
                            f"{config.get('median_image_size_in_voxels')}); use a larger image_size")


def save_plan(plan: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Write the plan as JSON, atomically; returns the path."""
    check_plan(plan)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(plan, f, indent=1)
    return os.fspath(path)


def load_plan(path: str | os.PathLike) -> dict[str, Any]:
    """Read a plan file written by save_plan; PlanningError names the file when it is missing or invalid."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PlanningError(f"plans file {path} does not exist: pass --plans_file PATH (the {PLAN_FILENAME} "
                            f"written beside the trained model, or the federated job's plan)")
    try:
        with open(path) as f:
            plan = json.load(f)
    except (OSError, ValueError) as err:
        raise PlanningError(f"plans file {path} is not readable JSON: {err}") from err
    check_plan(plan, source=f"plans file {path}")
    return plan


def resolve_plan(plans_file: str | os.PathLike | None, datalist: str | os.PathLike | Sequence[str | os.PathLike] | None,
                 image_size: int, output_dir: str | os.PathLike | None = None, gpu_memory_target_gb: float = 8.0,
                 progress: bool = True) -> dict[str, Any]:
    """The plan a bundle runs with: `plans_file` if given (federated: the server's plan), else planned
    here from the fingerprints of the `datalist` site(s), merged (centralized nnU-Net: one plan from
    the pooled sites). The plan must be for `image_size` and the datalists' label channels. A copy is
    written to output_dir/nnunet_plans.json, beside the model it trains."""
    if plans_file:
        plan = load_plan(plans_file)
        source = f"plans file {plans_file}"
    else:
        paths = [datalist] if isinstance(datalist, (str, os.PathLike)) else list(datalist)
        fingerprints = [site_fingerprint(p, image_size=image_size, progress=progress) for p in paths]
        plan = make_plan(merge_fingerprints(fingerprints), gpu_memory_target_gb=gpu_memory_target_gb)
        source = "the plan made from the datalists"
    if plan["image_size"] != image_size:
        raise PlanningError(f"{source} was made for image_size {plan['image_size']}, the bundle runs at {image_size}: "
                            f"pass --image_size {plan['image_size']} or plan again")
    channels = plan["label_channels"] if datalist is None else datalist_label_channels(datalist)  # None: no data (checks)
    if plan["label_channels"] != channels:
        raise PlanningError(f"{source} is for label channels {plan['label_channels']}, the datalist has {channels}")
    if output_dir:
        save_plan(plan, os.path.join(os.fspath(output_dir), PLAN_FILENAME))
    return plan
