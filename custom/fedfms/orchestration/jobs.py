"""NVFlare job folders for every federated method, written with NVFlare's Job API.

``JobSettings`` holds every parameter of a job; its defaults reproduce the paper (the ``paper`` training
profile, every site of the dataset training). ``build_job`` turns it into one Python definition, an
NVFlare ``FedJob`` made of the real component objects (so their constructors check the arguments when
the job is written), and ``write_job`` exports it to a folder that runs unchanged in the simulator, POC
and production::

    JOB/meta.json                           deploy_map: the server and the sites that take part (the
                                            training sites, and the held-out ones for cross_site_eval);
                                            scope: the privacy scope (the method's, fedfms.registry)
    JOB/app/config/config_fed_server.json   ScatterAndGather over the training sites, weighted FedAvg
                                            (bad updates rejected), best-model selection, cross-site
                                            evaluation, TensorBoard, the round report
    JOB/app/config/config_fed_client.json   BundleExecutor + TensorBoard streaming
    JOB/app/config/bundle/configs/          the MONAI bundle (bundles/<bundle>/configs) and job.json,
                                            the job's settings of the bundle, written once
    JOB/app/custom/fedfms/                  only with embed_code: the fedfms package travels in the job

Why the bundle is copied into every job: NVFlare deploys the job folder, and nothing else, to each
site; the bundle is what a site runs and what its reviewers read. Nothing site-specific (data paths,
SAM checkpoint, device) is written: sites read them from their own configuration
(``fedfms.runtime.site_config``). ``tools/make_jobs.py`` writes jobs/ with these defaults.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from nvflare.apis.dxo import DataKind
from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import InTimeAccumulateWeightedAggregator
from nvflare.app_common.shareablegenerators.full_model_shareable_generator import FullModelShareableGenerator
from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from nvflare.app_common.widgets.validation_json_generator import ValidationJsonGenerator
from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval
from nvflare.app_opt.pt.file_model_locator import PTFileModelLocator
from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver
from nvflare.app_opt.tracking.tb.tb_writer import TBWriter
from nvflare.job_config.api import FedJob

from fedfms.core.io import staged_directory, write_json_atomic
from fedfms.core.options import OptionError, as_bool, as_choice, as_float, as_int, as_names
from fedfms.core.wire import BUNDLE_IN_APP, FINGERPRINT_TASK, GLOBAL_MODEL_IN_RUN, JOB_CONFIG, PLAN_TASK, VAL_DICE
from fedfms.registry import PAPER, Profile, bundle_overrides, dataset_names, get_dataset, get_method, method_names
from fedfms.runtime.aggregation import (
    AGGREGATIONS, CLIP_FACTOR, FEDSCA_TEMPERATURE, OUTLIER_FACTOR, ROBUST_MEANS, GuardedAggregator,
)
from fedfms.runtime.best_model import AcceptedModelSelector
from fedfms.runtime.controller import TrainingSitesScatterAndGather
from fedfms.runtime.executor import BundleExecutor
from fedfms.runtime.nnunet_executor import PlannedBundleExecutor
from fedfms.runtime.nnunet_planning import NnUNetPlanning, PlannedModelPersistor
from fedfms.runtime.persistor import TransmittedModelPersistor
from fedfms.runtime.report import JobReport

from .transfer import TRANSFER_DEFAULTS, check_transfer, transfer_filters

_CLIENT_NAME = re.compile(r"[^A-Za-z0-9_-]")
TASKS = ["train", "validate"]
#: the tasks of the planning step of a job whose network is planned (``Method.planned``: FednnU-Net)
PLANNING_TASKS = [FINGERPRINT_TASK, PLAN_TASK]


def client_name(site: str) -> str:
    """NVFlare client name of a site folder (client names allow only letters, digits, '-' and '_')."""
    return _CLIENT_NAME.sub("_", site)


@dataclass(frozen=True)
class JobSettings:
    """All parameters of one job. Defaults reproduce the paper.

    method: a federated method of ``fedfms.registry`` ("fedsam", "fedmsa", "fedunet"); dataset: a
    registered dataset ("prostate", ...).
    profile: how models train (encoder, image size, rounds, local epochs, batch size, learning rate,
        loader workers; ``fedfms.registry.Profile``), default the paper's.
    sites: site folders taking part (default: every site of the dataset).
    held_out: sites that only evaluate (leave-one-site-out's unseen site); the others train.
    min_clients: training results a round needs; None = all training sites but one, so one failing
        site does not stop the job. wait_time_after_min_received: seconds the server then still waits
        for the last sites (a site that sent nothing in an earlier round is not waited for until it
        returns, see ``TrainingSitesScatterAndGather``). train_timeout: seconds a round may take before
        the server aggregates what it has, even with fewer than min_clients results (0 = no limit).
    cross_site_eval: after training, score the final and best global models on every site's test split.
    cross_site_eval_timeout: seconds the server waits for each model's cross-site scores
        (CrossSiteModelEval's validation_timeout; NVFlare's default is 6000).
    overrides: further bundle overrides (e.g. {"activation_checkpointing": True}).
    name: job name; default METHOD_DATASET.
    reject_bad_updates: the server rejects a site's result for the round when it holds non-finite
        values or other tensor names/shapes than the global model, or when its update's L2 distance
        from the global model exceeds outlier_factor x the round's median (>= 3 sites); see
        ``fedfms.runtime.aggregation.GuardedAggregator``. False = NVFlare's plain aggregator.
    outlier_factor: the k of that outlier test (0 = structural checks only).
    aggregation: "fedavg" (weights n_k, the paper's) or "fedsca" (n_k x softmax of each site's mean
        cosine similarity to the other sites' updates / fedsca_temperature; our interpretation of
        FedSCA). "fedsca" always uses the GuardedAggregator.
    half_precision: models travel as float16 both ways (filters in ``fedfms.runtime.precision``):
        half the bytes, rounding error 2**-11 relative per value. Off by default (the paper's float32).
    max_samples: the server rejects a result whose sample count n_k exceeds this (0 = no bound; a
        site's n_k is also pinned to its first accepted value for the job).
    clip_factor: clip each update's L2 norm to clip_factor x the median accepted norm of the last
        rounds (0 = no clipping). robust_mean: "mean" (n_k-weighted FedAvg), "trimmed_mean" (per
        coordinate, drop the trim lowest and highest values; >= 2 trim + 1 results) or "median" (>= 3).
    resume_from: continue a job lost to a server crash: the crashed job's server run folder (absolute
        path on the server, WORKSPACE/JOB_ID, or a downloaded copy); the job starts from its
        app_server/FL_global_model.pt at the round after the last in its fedfms_rounds.json.
    dp_clip_norm, dp_noise_multiplier, dp_delta: differential privacy of the site updates
        (``fedfms.runtime.dp``): each update clipped to L2 dp_clip_norm plus Gaussian noise of std
        dp_noise_multiplier x dp_clip_norm, (epsilon, dp_delta) reported per site. dp_clip_norm 0 = off.
    compression: "int8": sites send their update (trained - received) as int8 with a scale per
        ``compression_scale`` ("channel" or "tensor") and error feedback; with ``compress_download`` the
        global model goes to the sites the same way, as a delta against the previous one. "none" (default).
    topk_fraction: with int8, send only this fraction of each tensor's entries (largest first; the rest
        waits in the error feedback). 0 = all.
    partial_upload_blocks: K: sites send only the tensors of the first K encoder blocks (FedMSA: their
        adapters) plus decoder and head; the server keeps the global values of the rest (FedSCA's
        partial upload, our interpretation). None = all. See ``fedfms.runtime.compression``.
    """

    method: str
    dataset: str
    profile: Profile = PAPER
    sites: Optional[Tuple[str, ...]] = None
    held_out: Tuple[str, ...] = ()
    min_clients: Optional[int] = None
    wait_time_after_min_received: int = 600
    train_timeout: int = 10800
    cross_site_eval: bool = True
    cross_site_eval_timeout: int = 3600
    overrides: Mapping[str, object] = field(default_factory=dict)
    name: Optional[str] = None
    reject_bad_updates: bool = True
    outlier_factor: float = OUTLIER_FACTOR
    aggregation: str = AGGREGATIONS[0]
    fedsca_temperature: float = FEDSCA_TEMPERATURE
    half_precision: bool = TRANSFER_DEFAULTS.half_precision
    max_samples: int = 0
    clip_factor: float = CLIP_FACTOR
    robust_mean: str = ROBUST_MEANS[0]
    trim: int = 1
    resume_from: Optional[str] = None
    dp_clip_norm: float = 0.0
    dp_noise_multiplier: float = 1.0
    dp_delta: float = 1e-5
    compression: str = TRANSFER_DEFAULTS.compression
    compression_scale: str = TRANSFER_DEFAULTS.compression_scale
    topk_fraction: float = TRANSFER_DEFAULTS.topk_fraction
    compress_download: bool = TRANSFER_DEFAULTS.compress_download
    partial_upload_blocks: Optional[int] = TRANSFER_DEFAULTS.partial_upload_blocks

    def __post_init__(self) -> None:
        """Check and convert every field; OptionError (a ValueError) naming a bad one."""
        typed = {"held_out": as_names("held_out", self.held_out),
                 "wait_time_after_min_received": as_int("wait_time_after_min_received", self.wait_time_after_min_received, 0),
                 "train_timeout": as_int("train_timeout", self.train_timeout, 0),
                 "cross_site_eval_timeout": as_int("cross_site_eval_timeout", self.cross_site_eval_timeout, 0),
                 "max_samples": as_int("max_samples", self.max_samples, 0),
                 "trim": as_int("trim", self.trim, 1),
                 "clip_factor": as_float("clip_factor", self.clip_factor, minimum=0),
                 "robust_mean": as_choice("robust_mean", self.robust_mean, ROBUST_MEANS),
                 "dp_clip_norm": as_float("dp_clip_norm", self.dp_clip_norm, minimum=0),
                 "dp_noise_multiplier": as_float("dp_noise_multiplier", self.dp_noise_multiplier, minimum=0),
                 "dp_delta": as_float("dp_delta", self.dp_delta, above=0),
                 "outlier_factor": as_float("outlier_factor", self.outlier_factor, minimum=0),
                 "fedsca_temperature": as_float("fedsca_temperature", self.fedsca_temperature, above=0),
                 "topk_fraction": as_float("topk_fraction", self.topk_fraction, minimum=0),
                 **{name: as_bool(name, getattr(self, name))
                    for name in ("cross_site_eval", "reject_bad_updates", "half_precision", "compress_download")}}
        if self.partial_upload_blocks is not None:
            typed["partial_upload_blocks"] = as_int("partial_upload_blocks", self.partial_upload_blocks, 0)
        if self.sites is not None:
            typed["sites"] = as_names("sites", self.sites)
        if self.min_clients is not None:
            typed["min_clients"] = as_int("min_clients", self.min_clients, 1)
        if not isinstance(self.profile, Profile):
            raise OptionError(f"option profile={self.profile!r}: expected a fedfms.registry.Profile")
        for name, value in typed.items():
            object.__setattr__(self, name, value)  # frozen dataclass: store the converted value
        if self.method not in method_names(federated=True):
            raise ValueError(f"unknown method {self.method!r}; expected one of {method_names(federated=True)}")
        get_dataset(self.dataset)  # ValueError naming the registered datasets
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; expected one of {AGGREGATIONS}")
        if self.resume_from is not None and not Path(self.resume_from).is_absolute():
            raise ValueError(f"resume_from must be an absolute path on the server, got {self.resume_from!r}")
        if not self.dp_delta < 1:
            raise OptionError(f"option dp_delta={self.dp_delta!r}: expected 0 < dp_delta < 1")
        if self.dp_clip_norm and get_method(self.method).bundle == "unet":
            raise ValueError("differential privacy is not offered for fedunet: noise on BatchNorm running "
                             "variances can make them negative")
        unknown = set(self.held_out) - set(self.all_sites)
        if unknown:
            raise ValueError(f"held-out sites {sorted(unknown)} are not sites of {self.dataset}: {list(self.all_sites)}")
        if not self.train_sites:
            raise ValueError("at least one site must train")
        check_transfer(self)

    @property
    def job_name(self) -> str:
        return self.name or f"{self.method}_{self.dataset}"

    @property
    def all_sites(self) -> Tuple[str, ...]:
        return tuple(self.sites) if self.sites else get_dataset(self.dataset).sites

    @property
    def train_sites(self) -> List[str]:
        return [s for s in self.all_sites if s not in self.held_out]

    @property
    def deployed_sites(self) -> List[str]:
        """Sites the job's app goes to: the training sites, and the held-out ones only when they score the
        models (cross_site_eval); otherwise a held-out site would only start a client that waits."""
        return list(self.all_sites) if self.cross_site_eval else self.train_sites

    @property
    def min_training_results(self) -> int:
        """Results a round needs (min_clients, default all training sites but one)."""
        return self.min_clients or max(1, len(self.train_sites) - 1)

    def bundle_overrides(self) -> Dict[str, object]:
        """The bundle config overrides of the job (configs/job.json; the same on the server and every site)."""
        overrides = bundle_overrides(get_method(self.method), get_dataset(self.dataset), self.profile)
        overrides.update(self.overrides)
        return overrides


def _aggregator(s: JobSettings):
    if (not s.reject_bad_updates and s.aggregation == "fedavg" and not s.clip_factor and s.robust_mean == "mean"
            and s.partial_upload_blocks is None):
        return InTimeAccumulateWeightedAggregator(expected_data_kind=DataKind.WEIGHTS, weigh_by_local_iter=True)
    return GuardedAggregator(outlier_factor=s.outlier_factor if s.reject_bad_updates else 0.0, aggregation=s.aggregation,
                             temperature=s.fedsca_temperature, max_samples=s.max_samples, clip_factor=s.clip_factor,
                             robust_mean=s.robust_mean, trim=s.trim, upload_blocks=s.partial_upload_blocks)


def build_job(settings: JobSettings, bundle_configs: Path, staging: Path, embed_code: bool = False) -> FedJob:
    """The job of ``settings`` as an NVFlare ``FedJob``: one app for the server and every site.

    bundle_configs: the bundle's configs folder (copied into the job); staging: a scratch folder for
    files the job carries (configs/job.json, the embedded package), alive until the job is exported.
    """
    s = settings
    planned = get_method(s.method).planned
    train = [client_name(x) for x in s.train_sites]
    clients = [client_name(x) for x in s.deployed_sites]
    # The deploy map names the sites (not "@ALL"): `nvflare simulator JOB` takes its clients from it.
    # The scope names the privacy policy each site applies to the job's results (fedfms.runtime.privacy).
    job = FedJob(name=s.job_name, min_clients=s.min_training_results,
                 meta_props={"deploy_map": {"app": ["server", *clients]}, "scope": get_method(s.method).privacy_scope})
    job.set_app_packages(["fedfms"])  # installed at every participant (or embedded below), never copied per class

    resume = s.resume_from or ""
    persistor_class = PlannedModelPersistor if planned else TransmittedModelPersistor
    persistor = persistor_class(source_ckpt_file_full_name=str(Path(resume) / GLOBAL_MODEL_IN_RUN)) \
        if resume else persistor_class()
    job.to_server(persistor, id="persistor")
    job.to_server(FullModelShareableGenerator(), id="shareable_generator")
    job.to_server(_aggregator(s), id="aggregator")
    # Best global model = highest validation Dice of the received model, weighted by samples, over the
    # results the aggregator accepted.
    job.to_server(AcceptedModelSelector(weigh_by_local_iter=True, key_metric=VAL_DICE), id="model_selector")
    job.to_server(PTFileModelLocator(pt_persistor_id="persistor"), id="model_locator")
    job.to_server(ValidationJsonGenerator(), id="json_generator")
    job.to_server(TBAnalyticsReceiver(), id="tb_analytics_receiver")
    job.to_server(JobReport(train_sites=train, held_out_sites=[client_name(x) for x in s.held_out], resume_from=resume),
                  id="report")
    if planned:  # workflows run in order: the plan, hence the network, exists before the first round
        job.to_server(NnUNetPlanning(train_sites=train, min_clients=s.min_training_results, task_timeout=s.train_timeout),
                      id="nnunet_planning")
    job.to_server(TrainingSitesScatterAndGather(
        train_sites=train, min_clients=s.min_training_results, num_rounds=s.profile.rounds,
        wait_time_after_min_received=s.wait_time_after_min_received, train_timeout=s.train_timeout,
        persistor_id="persistor", aggregator_id="aggregator", shareable_generator_id="shareable_generator",
        resume_from=resume), id="scatter_and_gather")
    if s.cross_site_eval:
        job.to_server(CrossSiteModelEval(model_locator_id="model_locator", submit_model_task_name="",
                                         validation_timeout=s.cross_site_eval_timeout), id="cross_site_model_eval")

    folders = {client_name(x): x for x in s.all_sites if client_name(x) != x}
    executor = PlannedBundleExecutor if planned else BundleExecutor
    job.to_clients(executor(s.dataset, local_epochs=s.profile.local_epochs, site_folders=folders or None),
                   tasks=TASKS + PLANNING_TASKS if planned else TASKS)
    job.to_clients(TBWriter(), id="analytic_sender")
    job.to_clients(ConvertToFedEvent(events_to_convert=["analytix_log_stats"], fed_event_prefix="fed."), id="event_to_fed")
    # float16 / int8 transfer and partial upload: one chain per side and direction (fedfms.orchestration.transfer)
    for side, kind, filters in transfer_filters(s):
        for f in filters:
            (job.to_server if side == "server" else job.to_clients)(f, filter_type=kind, tasks=TASKS)

    bundle_dir = str(Path(BUNDLE_IN_APP).relative_to("config"))
    job.add_file_to_clients(str(bundle_configs), dest_dir=f"{bundle_dir}/configs", app_folder_type="config")
    job_config = write_json_atomic(staging / Path(JOB_CONFIG).name, s.bundle_overrides())
    job.add_file_to_clients(str(job_config), dest_dir=f"{bundle_dir}/configs", app_folder_type="config")
    if embed_code:
        package = Path(__file__).resolve().parents[1]
        copy = shutil.copytree(package, staging / "fedfms", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        job.add_file_to_clients(str(copy), dest_dir="fedfms", app_folder_type="custom")
    return job


def write_job(settings: JobSettings, out_dir: Path, bundles_dir: Path, embed_code: bool = False) -> Path:
    """Write the job folder ``out_dir/<job name>`` (replacing it atomically) and return its path.

    bundles_dir: the repository's bundles/ folder (the job carries bundles/<bundle>/configs).
    embed_code: also copy the fedfms package into app/custom/, for sites without fedfms installed.
    """
    bundle_configs = Path(bundles_dir) / get_method(settings.method).bundle / "configs"
    if not (bundle_configs / "train.json").is_file():
        raise FileNotFoundError(f"bundle configs {bundle_configs}/train.json not found")
    target = Path(out_dir) / settings.job_name
    with tempfile.TemporaryDirectory() as scratch, staged_directory(target) as staging:
        build_job(settings, bundle_configs, Path(scratch), embed_code).export_job(str(staging))
        exported = staging / settings.job_name
        for item in exported.iterdir():  # FedJob exports into job_root/<name>
            item.rename(staging / item.name)
        exported.rmdir()
    return target


def job_configs(settings: JobSettings, bundles_dir: Path) -> Dict[str, dict]:
    """The JSON files of the job ``write_job`` writes: {"meta", "server", "client", "bundle" (configs/job.json)}."""
    with tempfile.TemporaryDirectory() as tmp:
        job = write_job(settings, Path(tmp), bundles_dir)
        config = job / "app" / "config"
        files = {"meta": job / "meta.json", "server": config / "config_fed_server.json",
                 "client": config / "config_fed_client.json", "bundle": job / "app" / BUNDLE_IN_APP / JOB_CONFIG}
        return {key: json.loads(path.read_text()) for key, path in files.items()}


def paper_jobs() -> List[JobSettings]:
    """The committed job suite: every federated method on every dataset with the paper's settings."""
    return [JobSettings(method, dataset) for dataset in dataset_names() for method in method_names(federated=True)]
