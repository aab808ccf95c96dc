"""The job suite: jobs/ in sync with its generator, paper settings, no machine paths, site names."""

from __future__ import annotations

import json
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.utils.class_utils import instantiate_class

from fedfms.orchestration.jobs import JobSettings, client_name, write_job
from fedfms.registry import PAPER, dataset_names, method_names

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"


def _config(job: str, side: str) -> dict:
    return json.loads((JOBS / job / "app" / "config" / f"config_fed_{side}.json").read_text())


def _bundle_settings(job: str) -> dict:
    return json.loads((JOBS / job / "app" / "config" / "bundle" / "configs" / "job.json").read_text())


def _component(config: dict, component_id: str) -> dict:
    return next(c for c in config["components"] + config.get("workflows", []) if c["id"] == component_id)


def test_jobs_folder_is_in_sync_with_the_generator(tmp_path):
    spec = importlib.util.spec_from_file_location("make_jobs", REPO / "tools" / "make_jobs.py")
    make_jobs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_jobs)
    assert make_jobs.main(["--check"]) == 0, "jobs/ is stale: run python tools/make_jobs.py"
    # and the check can fail: a hand edit is detected
    make_jobs.main(["--out", str(tmp_path), "--method", "fedmsa", "--dataset", "prostate"])
    (tmp_path / "fedmsa_prostate" / "meta.json").write_text("{}")
    assert make_jobs.differences(JOBS / "fedmsa_prostate", tmp_path / "fedmsa_prostate") == ["meta.json"]


def test_make_jobs_demo_profile_without_cross_site_evaluation(tmp_path):
    spec = importlib.util.spec_from_file_location("make_jobs", REPO / "tools" / "make_jobs.py")
    make_jobs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_jobs)
    assert make_jobs.main(["--out", str(tmp_path), "--method", "fednnunet", "--dataset", "prostate", "--held-out", "UCL",
                           "--profile", "demo", "--rounds", "1", "--no-cross-site-eval"]) == 0
    job = tmp_path / "fednnunet_prostate" / "app" / "config"
    overrides = json.loads((job / "bundle" / "configs" / "job.json").read_text())
    # the demo profile's batch 4, 64 px and loader workers 0; its nnU-Net overrides (no mirroring, 100-batch
    # epochs); --rounds replaces the profile's 2 rounds in the poly schedule
    assert overrides == {"num_classes": 1, "image_size": 64, "batch_size": 4, "num_workers": 0,
                         "use_mirroring": False, "iterations_per_epoch": 100, "lr_schedule_epochs": 1}
    server = json.loads((job / "config_fed_server.json").read_text())
    assert [w["id"] for w in server["workflows"]] == ["nnunet_planning", "scatter_and_gather"]
    # nothing for the held-out site to do without cross-site evaluation: no app (no idle client) for it
    meta = json.loads((tmp_path / "fednnunet_prostate" / "meta.json").read_text())
    assert meta["deploy_map"] == {"app": ["server", "BIDMC", "HK", "I2CVB", "ISBI", "ISBI1_5"]}
    assert _component(server, "scatter_and_gather")["args"]["num_rounds"] == 1
    # without --profile the paper's settings stay (the committed suite), cross-site evaluation included
    assert make_jobs.main(["--out", str(tmp_path / "paper"), "--method", "fedmsa", "--dataset", "prostate"]) == 0
    assert make_jobs.differences(JOBS / "fedmsa_prostate", tmp_path / "paper" / "fedmsa_prostate") == []


def test_every_method_and_dataset_has_a_job_with_the_paper_settings():
    expected_batch = {("fedsam", "nuclei"): 4, ("fedmsa", "brain"): 8}
    assert sorted(dataset_names()) == ["brain", "fundus", "nuclei", "prostate"]
    assert {"fedsam", "fedmsa", "fedunet", "fednnunet"} <= set(method_names(federated=True))
    for dataset in dataset_names():
        for method in method_names(federated=True):
            job = f"{method}_{dataset}"
            meta = json.loads((JOBS / job / "meta.json").read_text())
            settings = JobSettings(method, dataset)
            assert meta["deploy_map"] == {"app": ["server", *map(client_name, settings.all_sites)]}
            # the job's bundle settings are written once (configs/job.json), not in the component configs
            overrides = _bundle_settings(job)
            assert "overrides" not in _config(job, "client")["executors"][0]["executor"]["args"]
            assert "overrides" not in _component(_config(job, "server"), "persistor")["args"]
            assert overrides["num_classes"] == (2 if dataset == "fundus" else 1)
            server, client = _config(job, "server"), _config(job, "client")
            workflows = [w["id"] for w in server["workflows"]]
            executor = client["executors"][0]
            if method == "fednnunet":
                # the plan's network, batch size and nnU-Net's own learning rate; its poly schedule spans
                # 100 rounds x 1 local epoch; the planning step runs first and its tasks reach the sites
                assert overrides == {"num_classes": overrides["num_classes"], "lr_schedule_epochs": 100}
                assert workflows == ["nnunet_planning", "scatter_and_gather", "cross_site_model_eval"]
                planning = _component(server, "nnunet_planning")
                assert planning["path"] == "fedfms.runtime.nnunet_planning.NnUNetPlanning"
                assert planning["args"]["train_sites"] == meta["deploy_map"]["app"][1:]
                assert planning["args"]["min_clients"] == len(settings.train_sites) - 1
                assert executor["tasks"] == ["train", "validate", "nnunet_fingerprint", "nnunet_plan"]
                assert executor["executor"]["path"] == "fedfms.runtime.nnunet_executor.PlannedBundleExecutor"
                assert _component(server, "persistor")["path"] == "fedfms.runtime.nnunet_planning.PlannedModelPersistor"
            else:
                assert workflows == ["scatter_and_gather", "cross_site_model_eval"]
                assert executor["tasks"] == ["train", "validate"]
                assert executor["executor"]["path"] == "fedfms.runtime.executor.BundleExecutor"
                assert _component(server, "persistor")["path"] == "fedfms.runtime.persistor.TransmittedModelPersistor"
            if method in ("fedunet", "fednnunet"):
                assert "model_type" not in overrides and "batch_size" not in overrides
            else:
                assert (overrides["model_type"], overrides["image_size"]) == ("vit_b", 1024)
                default = 6 if method == "fedsam" else 4
                assert overrides["batch_size"] == expected_batch.get((method, dataset), default)
            workflow = _component(_config(job, "server"), "scatter_and_gather")["args"]
            assert workflow["num_rounds"] == 100 and workflow["train_sites"] == meta["deploy_map"]["app"][1:]
            assert (JOBS / job / "app" / "config" / "bundle" / "configs" / "train.json").is_file()


def test_jobs_hold_no_machine_paths_and_map_dotted_site_names():
    for path in [*JOBS.rglob("config_fed_*.json"), *JOBS.rglob("job.json")]:
        text = path.read_text()
        assert '"/' not in text and "FEDFMS_" not in text, path
    args = _config("fedmsa_prostate", "client")["executors"][0]["executor"]["args"]
    assert args["site_folders"] == {"ISBI1_5": "ISBI1.5"}  # NVFlare client names cannot contain dots


def test_job_settings_validation():
    with pytest.raises(ValueError, match="not sites of prostate"):
        JobSettings("fedmsa", "prostate", held_out=("Nowhere",))
    with pytest.raises(ValueError, match="unknown method"):
        JobSettings("fedavg", "prostate")
    held = JobSettings("fedmsa", "prostate", held_out=("UCL",))
    assert "UCL" not in held.train_sites and len(held.train_sites) == 5


def test_job_aggregator_weights_sites_by_training_samples():
    """The aggregator exactly as the job configures it: FedAvg weighted by NUM_STEPS_CURRENT_ROUND (n_k)."""
    spec = _component(_config("fedmsa_prostate", "server"), "aggregator")
    aggregator = instantiate_class(spec["path"], spec["args"])
    fl_ctx = FLContext()
    aggregator.handle_event(EventType.START_RUN, fl_ctx)  # NVFlare configures the aggregator at run start
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, 3, private=True, sticky=False)
    fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable({"w": np.zeros((4, 3), np.float32)}, {}),
                    private=True, sticky=False)
    rng = np.random.default_rng(0)
    sites = {"A": (rng.normal(size=(4, 3)).astype(np.float32), 97), "B": (rng.normal(size=(4, 3)).astype(np.float32), 41),
             "C": (rng.normal(size=(4, 3)).astype(np.float32), 5)}
    for name, (weights, n) in sites.items():
        shareable = DXO(DataKind.WEIGHTS, {"w": weights}, {MetaKey.NUM_STEPS_CURRENT_ROUND: n}).to_shareable()
        shareable.set_peer_props({ReservedKey.IDENTITY_NAME: name})
        shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 3)
        assert aggregator.accept(shareable, fl_ctx)
    result = from_shareable(aggregator.aggregate(fl_ctx)).data["w"]
    expected = (sites["A"][0] * 97 + sites["B"][0] * 41 + sites["C"][0] * 5) / (97 + 41 + 5)
    np.testing.assert_allclose(result, expected, rtol=1e-6)
    assert not np.allclose(result, np.mean([w for w, _ in sites.values()], axis=0))


def test_embedded_code_travels_inside_the_job(tmp_path):
    settings = JobSettings("fedmsa", "prostate", PAPER.override(image_size=256), held_out=("UCL",))
    job = write_job(settings, tmp_path, REPO / "bundles", embed_code=True)
    custom = job / "app" / "custom" / "fedfms"
    assert (custom / "runtime" / "executor.py").read_text() == (REPO / "custom" / "fedfms" / "runtime" / "executor.py").read_text()
    assert not list(custom.rglob("__pycache__"))
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    assert _component(server, "scatter_and_gather")["args"]["train_sites"] == ["BIDMC", "HK", "I2CVB", "ISBI", "ISBI1_5"]
    assert json.loads((job / "app" / "config" / "bundle" / "configs" / "job.json").read_text())["image_size"] == 256
    unet = JobSettings("fedunet", "prostate").bundle_overrides()
    assert "image_size" not in unet
    assert JobSettings("fedunet", "prostate", PAPER.override(image_size=64)).bundle_overrides()["image_size"] == 64
