"""NVFlare job folders for FedSAM, FedMSA and FedU-Net: the one place their settings live.

``JobSettings`` holds every parameter of a job with the paper's values as defaults (ViT-B, 1024 px,
100 rounds of 1 local epoch, the paper's batch sizes, all sites of the dataset training). ``write_job``
turns it into a job folder that runs unchanged in the simulator, POC and production::

    JOB/meta.json                         deploy_map: the server and every site of the dataset
    JOB/app/config/config_fed_server.json ScatterAndGather + weighted FedAvg + best-model selection
                                          + cross-site evaluation + TensorBoard + round report
    JOB/app/config/config_fed_client.json BundleExecutor + TensorBoard streaming
    JOB/app/config/bundle/configs/        the MONAI bundle (copied from bundles/<name>/configs)
    JOB/app/custom/fedfms/                only with embed_code: the fedfms package travels in the job

Nothing site-specific (data paths, SAM checkpoint, device) is written: sites read them from their
own configuration (``site_config``). ``tools/make_jobs.py`` writes jobs/ from these defaults.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from fedfms.data import get_preparer
from fedfms.networks.configs import SAM_IMAGE_SIZE

from .aggregation import AGGREGATIONS

#: method -> bundle folder under bundles/
METHOD_BUNDLES: Dict[str, str] = {"fedsam": "sam", "fedmsa": "msa", "fedunet": "unet"}
#: Paper batch sizes (reference code): FedSAM 6 (nuclei 4), FedMSA 4 (brain 8); FedU-Net: bundle default.
PAPER_BATCH_SIZES: Dict[Tuple[str, Optional[str]], int] = {
    ("fedsam", None): 6, ("fedsam", "nuclei"): 4, ("fedmsa", None): 4, ("fedmsa", "brain"): 8,
}
#: Label channels per dataset (fundus: optic disc and cup).
NUM_CLASSES: Dict[str, int] = {"fundus": 2}
DATASETS = ("prostate", "brain", "fundus", "nuclei")
BUNDLE_IN_APP = "config/bundle"
_CLIENT_NAME = re.compile(r"[^A-Za-z0-9_-]")


def client_name(site: str) -> str:
    """NVFlare client name of a site folder (client names allow only letters, digits, '-' and '_')."""
    return _CLIENT_NAME.sub("_", site)


@dataclass(frozen=True)
class JobSettings:
    """All parameters of one job. Defaults reproduce the paper; the SAM-only ones are ignored for fedunet.

    method: "fedsam" | "fedmsa" | "fedunet"; dataset: a registered dataset ("prostate", ...).
    sites: site folders taking part (default: every site of the dataset's preparer).
    held_out: sites that only evaluate (leave-one-site-out's unseen site); the others train.
    num_rounds / local_epochs: FedAvg rounds and local epochs per round.
    model_type: SAM encoder ("vit_b", "vit_l", "vit_h", "vit_tiny"; ignored for fedunet).
    image_size: input size; None = the paper's 1024 for SAM, the U-Net bundle's default for fedunet.
    batch_size: None = the paper's for this method and dataset (bundle default for fedunet).
    min_clients: training results a round needs; None = all training sites but one, so one failing
        site does not stop the job. wait_time_after_min_received: seconds the server then still waits
        for the last site. train_timeout: seconds a site may train per round (0 = no limit).
    cross_site_eval: after training, score the final and best global models on every site's test split.
    overrides: further bundle overrides (e.g. {"learning_rate": 1e-4}).
    name: job name; default METHOD_DATASET.
    reject_bad_updates: the server rejects a site's result for the round when it holds non-finite
        values or other tensor names/shapes than the global model, or when its update's L2 distance
        from the global model exceeds outlier_factor x the round's median (>= 3 sites); see
        ``fedfms.federated.aggregation.GuardedAggregator``. False = NVFlare's plain aggregator.
    outlier_factor: the k of that outlier test (0 = structural checks only).
    aggregation: "fedavg" (weights n_k, the paper's) or "fedsca" (n_k x softmax of each site's mean
        cosine similarity to the other sites' updates / fedsca_temperature; our interpretation of
        FedSCA). "fedsca" always uses the GuardedAggregator.
    half_precision: models travel as float16 both ways (filters in ``fedfms.federated.precision``):
        half the bytes, rounding error 2**-11 relative per value. Off by default (the paper's float32).
    """

    method: str
    dataset: str
    sites: Optional[Tuple[str, ...]] = None
    held_out: Tuple[str, ...] = ()
    num_rounds: int = 100
    local_epochs: int = 1
    model_type: str = "vit_b"
    image_size: Optional[int] = None
    batch_size: Optional[int] = None
    min_clients: Optional[int] = None
    wait_time_after_min_received: int = 3600
    train_timeout: int = 0
    cross_site_eval: bool = True
    overrides: Mapping[str, object] = field(default_factory=dict)
    name: Optional[str] = None
    reject_bad_updates: bool = True
    outlier_factor: float = 5.0
    aggregation: str = "fedavg"
    fedsca_temperature: float = 0.1
    half_precision: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHOD_BUNDLES:
            raise ValueError(f"unknown method {self.method!r}; expected one of {sorted(METHOD_BUNDLES)}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; expected one of {AGGREGATIONS}")
        if self.outlier_factor < 0 or self.fedsca_temperature <= 0:
            raise ValueError("outlier_factor must be >= 0 and fedsca_temperature > 0")
        unknown = set(self.held_out) - set(self.all_sites)
        if unknown:
            raise ValueError(f"held-out sites {sorted(unknown)} are not sites of {self.dataset}: {list(self.all_sites)}")
        if not self.train_sites:
            raise ValueError("at least one site must train")

    @property
    def job_name(self) -> str:
        return self.name or f"{self.method}_{self.dataset}"

    @property
    def all_sites(self) -> Tuple[str, ...]:
        return tuple(self.sites) if self.sites else tuple(get_preparer(self.dataset).sites)

    @property
    def train_sites(self) -> List[str]:
        return [s for s in self.all_sites if s not in self.held_out]

    def bundle_overrides(self) -> Dict[str, object]:
        """The bundle config overrides the job sets (the same on the server and on every site)."""
        overrides: Dict[str, object] = {"num_classes": NUM_CLASSES.get(self.dataset, 1)}
        if self.method != "fedunet":
            overrides.update(model_type=self.model_type, image_size=self.image_size or SAM_IMAGE_SIZE)
        elif self.image_size:
            overrides["image_size"] = self.image_size
        batch = self.batch_size or PAPER_BATCH_SIZES.get((self.method, self.dataset)) or PAPER_BATCH_SIZES.get((self.method, None))
        if batch:
            overrides["batch_size"] = batch
        overrides.update(self.overrides)
        return overrides


_NVFLARE_AGGREGATOR = "nvflare.app_common.aggregators.intime_accumulate_model_aggregator.InTimeAccumulateWeightedAggregator"
_HALF, _FULL = "fedfms.federated.precision.ToHalfPrecision", "fedfms.federated.precision.ToFullPrecision"


def _aggregator(s: JobSettings) -> dict:
    args = {"expected_data_kind": "WEIGHTS", "weigh_by_local_iter": True}
    if not s.reject_bad_updates and s.aggregation == "fedavg":
        return {"id": "aggregator", "path": _NVFLARE_AGGREGATOR, "args": args}
    args.update(outlier_factor=s.outlier_factor if s.reject_bad_updates else 0.0, aggregation=s.aggregation)
    if s.aggregation == "fedsca":
        args["temperature"] = s.fedsca_temperature
    return {"id": "aggregator", "path": "fedfms.federated.aggregation.GuardedAggregator", "args": args}


def _filters(s: JobSettings, path: str) -> List[dict]:
    """A task filter chain of one precision filter for every task, if half_precision."""
    return [{"tasks": ["train", "validate"], "filters": [{"path": path, "args": {}}]}] if s.half_precision else []


def _server_config(s: JobSettings) -> dict:
    train = [client_name(x) for x in s.train_sites]
    held = [client_name(x) for x in s.held_out]
    min_clients = s.min_clients or max(1, len(train) - 1)
    component = lambda id_, path, **args: {"id": id_, "path": path, "args": args}  # noqa: E731
    return {
        "format_version": 2,
        # half_precision: the global model leaves as float16, site results are back to float32 before
        # the aggregator sees them.
        "task_data_filters": _filters(s, _HALF),
        "task_result_filters": _filters(s, _FULL),
        "components": [
            component("persistor", "fedfms.federated.persistor.TransmittedModelPersistor",
                      bundle_root=BUNDLE_IN_APP, overrides=s.bundle_overrides()),
            component("shareable_generator",
                      "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator"),
            _aggregator(s),
            # Best global model = highest validation Dice of the received model, weighted by samples.
            component("model_selector", "nvflare.app_common.widgets.intime_model_selector.IntimeModelSelector",
                      weigh_by_local_iter=True, key_metric="val_dice"),
            component("model_locator", "nvflare.app_opt.pt.file_model_locator.PTFileModelLocator",
                      pt_persistor_id="persistor"),
            component("json_generator", "nvflare.app_common.widgets.validation_json_generator.ValidationJsonGenerator"),
            component("tb_analytics_receiver", "nvflare.app_opt.tracking.tb.tb_receiver.TBAnalyticsReceiver"),
            component("report", "fedfms.federated.report.JobReport", train_sites=train, held_out_sites=held),
        ],
        "workflows": [
            component("scatter_and_gather", "fedfms.federated.controller.TrainingSitesScatterAndGather",
                      train_sites=train, min_clients=min_clients, num_rounds=s.num_rounds,
                      wait_time_after_min_received=s.wait_time_after_min_received, train_timeout=s.train_timeout,
                      persistor_id="persistor", aggregator_id="aggregator",
                      shareable_generator_id="shareable_generator"),
        ] + ([component("cross_site_model_eval", "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval",
                        model_locator_id="model_locator", submit_model_task_name="")] if s.cross_site_eval else []),
    }


def _client_config(s: JobSettings) -> dict:
    folders = {client_name(x): x for x in s.all_sites if client_name(x) != x}
    executor_args = {"dataset": s.dataset, "bundle_root": BUNDLE_IN_APP, "local_epochs": s.local_epochs,
                     "overrides": s.bundle_overrides()}
    if folders:
        executor_args["site_folders"] = folders
    return {
        "format_version": 2,
        "executors": [{
            "tasks": ["train", "validate"],
            "executor": {"id": "executor", "path": "fedfms.federated.executor.BundleExecutor", "args": executor_args},
        }],
        "task_data_filters": _filters(s, _FULL),
        "task_result_filters": _filters(s, _HALF),
        "components": [
            {"id": "analytic_sender", "path": "nvflare.app_opt.tracking.tb.tb_writer.TBWriter", "args": {}},
            {"id": "event_to_fed", "path": "nvflare.app_common.widgets.convert_to_fed_event.ConvertToFedEvent",
             "args": {"events_to_convert": ["analytix_log_stats"], "fed_event_prefix": "fed."}},
        ],
    }


def _dump(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_job(settings: JobSettings, out_dir: Path, bundles_dir: Path, embed_code: bool = False) -> Path:
    """Write the job folder ``out_dir/<job name>`` (replacing it atomically) and return its path.

    bundles_dir: the repository's bundles/ folder (the job carries bundles/<name>/configs).
    embed_code: also copy the fedfms package into app/custom/, for sites without fedfms installed.
    """
    bundle_configs = Path(bundles_dir) / METHOD_BUNDLES[settings.method] / "configs"
    if not (bundle_configs / "train.json").is_file():
        raise FileNotFoundError(f"bundle configs {bundle_configs}/train.json not found")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / settings.job_name
    staging = Path(tempfile.mkdtemp(prefix=f".{settings.job_name}.", dir=out_dir))
    try:
        clients = [client_name(x) for x in settings.all_sites]
        _dump(staging / "meta.json", {
            "name": settings.job_name,
            "resource_spec": {},
            "min_clients": settings.min_clients or max(1, len(settings.train_sites) - 1),
            "deploy_map": {"app": ["server", *clients]},
        })
        _dump(staging / "app" / "config" / "config_fed_server.json", _server_config(settings))
        _dump(staging / "app" / "config" / "config_fed_client.json", _client_config(settings))
        shutil.copytree(bundle_configs, staging / "app" / BUNDLE_IN_APP / "configs")
        if embed_code:
            package = Path(__file__).resolve().parents[1]
            shutil.copytree(package, staging / "app" / "custom" / "fedfms",
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def paper_jobs() -> List[JobSettings]:
    """The committed job suite: every method on every dataset with the paper's settings."""
    return [JobSettings(method, dataset) for dataset in DATASETS for method in METHOD_BUNDLES]
