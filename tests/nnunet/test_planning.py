"""nnU-Net's planner run once on merged fingerprints; the plan's network; plan files; unplannable input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from fedfms.nnunet import PlanningError, build_network, load_plan, make_plan, resolve_plan, save_plan
from fedfms.nnunet.planning import FedfmsExperimentPlanner


def test_plan_is_2d_and_fits_the_data(plan, merged_fingerprint, frame_size):
    configurations = plan["plans"]["configurations"]
    assert list(configurations) == ["2d"], "2D samples: nnU-Net must plan its 2d configuration only"
    config = configurations["2d"]
    median = np.median(merged_fingerprint["shapes_after_crop"], 0)[1:]
    assert len(config["patch_size"]) == 2
    assert all(p <= m <= frame_size for p, m in zip(config["patch_size"], median))
    assert config["spacing"] == [1.0, 1.0]
    assert config["normalization_schemes"] == ["ZScoreNormalization"]
    assert config["batch_size"] >= 2  # nnU-Net's minimum batch size
    assert plan["sites"] == {"UCL": 6, "HK": 6} and plan["label_channels"] == ["prostate"]
    assert plan["dataset_json"]["labels"] == {"background": 0, "prostate": 1}
    assert plan["dataset_json"]["numTraining"] == 12
    assert json.loads(json.dumps(plan)) == plan


def test_network_from_plan_runs_forward_on_a_batch(plan):
    config = plan["plans"]["configurations"]["2d"]
    network = build_network(plan).eval()
    batch = torch.randn(config["batch_size"], 1, *config["patch_size"])
    with torch.no_grad():
        outputs = network(batch)
    stages = config["architecture"]["arch_kwargs"]["n_stages"]
    assert isinstance(outputs, (list, tuple)) and len(outputs) == stages - 1  # deep supervision heads
    assert outputs[0].shape == (config["batch_size"], 2, *config["patch_size"])  # background, prostate
    assert outputs[1].shape[-1] == config["patch_size"][-1] // 2


def test_plan_file_round_trip_and_bad_files(plan, tmp_path):
    path = save_plan(plan, tmp_path / "plans.json")
    assert load_plan(path) == plan
    with pytest.raises(PlanningError, match="does not exist: pass --plans_file"):
        load_plan(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PlanningError, match=r"bad.json is not readable JSON"):
        load_plan(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"plans": {}}))
    with pytest.raises(PlanningError, match="expected a fedfms-nnunet-plan/1 document"):
        load_plan(tmp_path / "other.json")


def test_resolve_plan_checks_image_size_and_labels(plan, two_sites, tmp_path, frame_size):
    path = save_plan(plan, tmp_path / "plans.json")
    assert resolve_plan(path, two_sites["UCL"], frame_size, tmp_path / "out") == plan
    assert load_plan(tmp_path / "out" / "nnunet_plans.json") == plan
    with pytest.raises(PlanningError, match=rf"made for image_size {frame_size}, the bundle runs at 64"):
        resolve_plan(path, two_sites["UCL"], 64)
    fundus = copy.deepcopy(plan)
    fundus["label_channels"] = ["OD", "OC"]
    with pytest.raises(PlanningError, match=r"is for label channels \['OD', 'OC'\], the datalist has \['prostate'\]"):
        resolve_plan(save_plan(fundus, tmp_path / "fundus.json"), two_sites["UCL"], frame_size)


def test_centralized_plan_from_pooled_datalists_equals_planning_the_merged_fingerprint(plan, two_sites, frame_size):
    assert resolve_plan(None, [two_sites["UCL"], two_sites["HK"]], frame_size) == plan


def test_unplannable_fingerprint_is_a_clear_error(merged_fingerprint):
    tiny = copy.deepcopy(merged_fingerprint)
    tiny["shapes_after_crop"] = [[1, 4, 4]] * tiny["num_cases"]
    with pytest.raises(PlanningError, match=r"1 stage\(s\).*too small after cropping.*use a larger image_size"):
        make_plan(tiny)
    zero_spacing = {**merged_fingerprint, "spacings": [[999.0, 0.0, 1.0]] * merged_fingerprint["num_cases"]}
    with pytest.raises(PlanningError, match=r"cannot plan: fingerprint\['spacings'\]: expected 12 lists of 3 numbers > 0"):
        make_plan(zero_spacing)
    with pytest.raises(PlanningError, match="cannot plan: fingerprint"):
        make_plan({"format": "fedfms-nnunet-fingerprint/1"})


def test_planner_failure_is_wrapped_with_the_fingerprint_summary(merged_fingerprint, monkeypatch):
    def fail(self):
        raise RuntimeError("no configuration fits")
    monkeypatch.setattr(FedfmsExperimentPlanner, "plan_experiment", fail)
    with pytest.raises(PlanningError, match=r"planner failed on the fingerprint \(12 cases of site\(s\) UCL\+HK, "
                                            r"image_size 32.*RuntimeError: no configuration fits"):
        make_plan(merged_fingerprint)
