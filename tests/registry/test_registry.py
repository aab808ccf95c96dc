"""The registries are the one source of methods, datasets and training settings: what they declare is
what the bundles, the job generator, the study and the CLIs use, and adding a method or a dataset is one
registration (proved with toy ones)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from fedfms.data import preparation
from fedfms.networks import DEFAULT_MODEL_TYPE
from fedfms.orchestration.jobs import JobSettings, job_configs, paper_jobs
from fedfms.registry import (
    PAPER, PROFILES, Profile, bundle_overrides, dataset_names, get_dataset, get_method, method_names, methods,
    register_bundle,
)
from fedfms.study import StudySettings, discover_sites, plan_study

REPO = Path(__file__).resolve().parents[2]


def test_methods_pair_each_bundle_federated_and_centralized():
    # the paper's Table 1 order
    assert method_names() == ["fedunet", "unet", "fednnunet", "nnunet", "fedsam", "sam", "fedmsa", "msa"]
    assert method_names(federated=True) == ["fedunet", "fednnunet", "fedsam", "fedmsa"]
    assert (get_method("fednnunet").label, get_method("nnunet").label) == ("FednnU-Net", "nnU-Net")
    assert get_method("fednnunet").planned and not get_method("fedunet").planned
    fedmsa, msa = get_method("fedmsa"), get_method("msa")
    assert (fedmsa.label, msa.label, fedmsa.bundle, msa.bundle) == ("FedMSA", "MSA", "msa", "msa")
    assert fedmsa.federated and not msa.federated and fedmsa.uses_sam and not get_method("unet").uses_sam
    # the reference code's batch sizes (FedSAM 6, nuclei 4; FedMSA 4, brain 8), U-Net: the bundle's
    assert [get_method("fedsam").batch_size(d) for d in ("prostate", "nuclei")] == [6, 4]
    assert [get_method("msa").batch_size(d) for d in ("prostate", "brain")] == [4, 8]
    assert get_method("fedunet").batch_size("prostate") is None
    with pytest.raises(ValueError, match="unknown method 'fedavg'"):
        get_method("fedavg")
    with pytest.raises(ValueError, match="already registered"):
        register_bundle("msa", "MSA again")


def test_bundles_build_what_the_registry_says():
    """The bundle configs are data: their network class and default encoder must match the registry."""
    for name in method_names(federated=True):
        method = get_method(name)
        train = json.loads((REPO / "bundles" / method.bundle / "configs" / "train.json").read_text())
        if method.network is not None:
            target = train["network_def"]["_target_"]
            assert target.rsplit(".", 1)[1] == method.network.__name__, (method.bundle, target)
            assert importlib.import_module(target.rsplit(".", 1)[0]).__dict__[method.network.__name__] is method.network
        if method.uses_sam:
            assert train["model_type"] == DEFAULT_MODEL_TYPE == PAPER.model_type


def test_datasets_come_from_the_preparers():
    assert dataset_names() == ["brain", "fundus", "nuclei", "prostate"]
    fundus, prostate = get_dataset("fundus"), get_dataset("prostate")
    assert fundus.label_channels == ("OD", "OC") and fundus.num_classes == 2 and not fundus.volumetric
    assert prostate.sites == ("BIDMC", "HK", "I2CVB", "ISBI", "ISBI1.5", "UCL") and prostate.volumetric
    assert get_dataset("brain").num_classes == get_dataset("nuclei").num_classes == 1
    with pytest.raises(ValueError, match="unknown dataset 'liver'"):
        get_dataset("liver")


def test_prepared_data_agree_with_the_registry(demo_data):
    datalist = json.loads((demo_data / "prostate" / "UCL" / "datalist.json").read_text())
    assert tuple(datalist["metadata"]["label_channels"]) == get_dataset("prostate").label_channels


def test_profiles_and_the_overrides_they_give():
    assert (PAPER.model_type, PAPER.image_size, PAPER.rounds, PAPER.local_epochs) == ("vit_b", None, 100, 1)
    demo = PROFILES["demo"]
    assert demo.override(rounds=3, image_size=None).rounds == 3 and demo.override(image_size=None).image_size == 64
    assert bundle_overrides(get_method("fedmsa"), get_dataset("brain"), PAPER) == {
        "num_classes": 1, "model_type": "vit_b", "image_size": 1024, "batch_size": 8}
    assert bundle_overrides(get_method("unet"), get_dataset("fundus"), demo) == {
        "num_classes": 2, "image_size": 64, "batch_size": 4, "learning_rate": 1e-3, "num_workers": 0, "cache_rate": 1.0}
    # nnU-Net: its own SGD learning rate (the profile's is Adam's) and data pipeline (no cache_rate), its
    # poly schedule over rounds x local epochs, the plan's batch size unless the profile sets one; in the
    # CPU demo no mirroring at test time and epochs of 100 batches
    assert bundle_overrides(get_method("fednnunet"), get_dataset("prostate"), PAPER) == {
        "num_classes": 1, "lr_schedule_epochs": 100}
    assert bundle_overrides(get_method("nnunet"), get_dataset("prostate"), demo.override(local_epochs=3)) == {
        "num_classes": 1, "image_size": 64, "batch_size": 4, "num_workers": 0, "lr_schedule_epochs": 6,
        "use_mirroring": False, "iterations_per_epoch": 100}
    # mixed precision goes to every bundle with the paper's recipe, activation checkpointing to SAM's only
    compute = PAPER.override(amp="false", amp_dtype="bfloat16", activation_checkpointing="true")
    assert (compute.amp, compute.activation_checkpointing) == (False, True)
    assert bundle_overrides(get_method("fedmsa"), get_dataset("prostate"), compute) == {
        "num_classes": 1, "model_type": "vit_b", "image_size": 1024, "batch_size": 4, "amp": False,
        "amp_dtype": "bfloat16", "activation_checkpointing": True}
    assert bundle_overrides(get_method("unet"), get_dataset("prostate"), compute) == {
        "num_classes": 1, "amp": False, "amp_dtype": "bfloat16"}
    assert bundle_overrides(get_method("fednnunet"), get_dataset("prostate"), compute) == {
        "num_classes": 1, "lr_schedule_epochs": 100}
    with pytest.raises(ValueError, match="option checkpoint=.last.: expected one of .best., .final."):
        Profile("x", checkpoint="last")
    with pytest.raises(ValueError, match="option amp='sometimes': expected true, false or auto"):
        Profile("x", amp="sometimes")


class ToyPreparer(preparation.Preparer):
    name = "toy"
    sites = ("North", "South", "East")
    source_release = "a toy release (test only)"
    label_channels = ("inner", "outer")
    volumetric = False

    def iter_cases(self, src, site, **options):
        return iter(())


def test_a_new_method_and_a_new_dataset_are_one_registration_each(monkeypatch, tmp_path):
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    monkeypatch.setitem(preparation._REGISTRY, "toy", ToyPreparer())
    bundles = tmp_path / "bundles"
    shutil.copytree(REPO / "bundles" / "unet", bundles / "toynet")
    register_bundle("toynet", "ToyNet", paper_batch_sizes={None: 3})

    assert method_names()[-2:] == ["fedtoynet", "toynet"] and "toy" in dataset_names()
    configs = job_configs(JobSettings("fedtoynet", "toy", held_out=("East",)), bundles)
    assert configs["bundle"] == {"num_classes": 2, "batch_size": 3}
    assert configs["meta"]["deploy_map"] == {"app": ["server", "North", "South", "East"]}
    assert {(s.method, s.dataset) for s in paper_jobs()} >= {("fedtoynet", "toy"), ("fedmsa", "toy")}

    spec = importlib.util.spec_from_file_location("make_jobs", REPO / "tools" / "make_jobs.py")
    make_jobs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_jobs)
    assert make_jobs.main(["--method", "fedtoynet", "--dataset", "toy", "--out", str(tmp_path / "jobs"),
                           "--bundles", str(bundles)]) == 0
    assert (tmp_path / "jobs" / "fedtoynet_toy" / "app" / "config" / "bundle" / "configs" / "job.json").is_file()

    root = tmp_path / "data"
    for site in ToyPreparer.sites:
        (root / "toy" / site).mkdir(parents=True)
        (root / "toy" / site / "datalist.json").write_text(json.dumps({"test": [], "metadata": {"site": site}}))
    settings = StudySettings("toy", root, tmp_path / "out", ("fedtoynet", "toynet"), held_out=("South",))
    runs = plan_study(settings, discover_sites(root, "toy"))
    assert [(r.name, r.label) for r in runs] == [("fedtoynet__South", "FedToyNet"), ("toynet__South", "ToyNet")]


def test_settings_are_typed_where_they_enter():
    """JobSettings and Profile fields from a CLI or a config: converted when unambiguous, errors naming the
    field otherwise (a bare string of sites would otherwise become its characters)."""
    from fedfms.core.options import OptionError
    from fedfms.runtime.executor import BundleExecutor

    job = JobSettings("fedmsa", "prostate", held_out=["UCL"], train_timeout="600", half_precision="false",
                      cross_site_eval="0", outlier_factor="2.5")
    assert (job.held_out, job.train_timeout, job.half_precision, job.cross_site_eval, job.outlier_factor) == \
        (("UCL",), 600, False, False, 2.5)
    for bad, message in ((dict(held_out="UCL"), r"held_out='UCL': expected a list of names"),
                         (dict(reject_bad_updates="maybe"), "reject_bad_updates='maybe': expected a boolean"),
                         (dict(min_clients=0), r"min_clients=0: expected an integer >= 1"),
                         (dict(profile="paper"), r"profile='paper': expected a fedfms.registry.Profile")):
        with pytest.raises(OptionError, match=message):
            JobSettings("fedmsa", "prostate", **bad)
    profile = Profile("cli", rounds="3", batch_size="8", learning_rate="1e-4", image_size=256.0)
    assert (profile.rounds, profile.batch_size, profile.learning_rate, profile.image_size) == (3, 8, 1e-4, 256)
    with pytest.raises(OptionError, match="model_type='vit_x'"):
        Profile("cli", model_type="vit_x")
    with pytest.raises(OptionError, match="learning_rate='fast'"):
        PAPER.override(learning_rate="fast")
    assert BundleExecutor("prostate", local_epochs="2").local_epochs == 2
    with pytest.raises(OptionError, match="local_epochs=0"):
        BundleExecutor("prostate", local_epochs=0)
