"""bundles/nnunet beyond the shared commands test: its configs against the other bundles', the README
checks, centralized planning from two pooled synthetic demo sites, training with a given plan, and a
pooled evaluation reported per site."""

from __future__ import annotations

import json
from pathlib import Path

from fedfms.nnunet import load_plan, make_plan, merge_fingerprints, save_plan, site_fingerprint

REPO = Path(__file__).resolve().parents[2]
# 32 px: a 4-stage nnU-Net; one epoch of one batch (--iterations_per_epoch 1) keeps each command to seconds
SMALL = ["--image_size", "32", "--max_epochs", "1", "--iterations_per_epoch", "1", "--num_workers", "0",
         "--use_mirroring", "False"]


def _config(bundle: str, name: str) -> dict:
    return json.loads((REPO / "bundles" / bundle / "configs" / name).read_text())


def test_nnunet_configs_differ_from_the_others_only_by_the_plan():
    plans_beside_model = "$os.path.join(os.path.dirname(@ckpt_path), 'nnunet_plans.json')"
    evaluate = _config("nnunet", "evaluate.json")
    assert evaluate.pop("plans_file") == plans_beside_model
    assert evaluate == _config("unet", "evaluate.json"), "bundles/nnunet/configs/evaluate.json differs beyond plans_file"
    # inference runs on top of train.json (nnU-Net's predictor is the validate inferer), with the others' writer
    inference = _config("nnunet", "inference.json")
    assert inference["plans_file"] == plans_beside_model and inference["inference"] == ["$@validate#evaluator.run()"]
    unet_writer = _config("unet", "inference.json")["datalist_inference"]["handlers"][-1]
    assert inference["validate#handlers"][-1] == unet_writer
    assert (REPO / "bundles/nnunet/configs/logging.conf").read_text() == (REPO / "bundles/unet/configs/logging.conf").read_text()
    train, unet = _config("nnunet", "train.json"), _config("unet", "train.json")
    assert train["validate"]["key_metric"] == unet["validate"]["key_metric"]  # same metrics, same model selection
    assert train["validate"]["handlers"] == unet["validate"]["handlers"]
    assert train["validate"]["dataset"]["data"] == unet["validate"]["dataset"]["data"]


def test_readme_checks_pass(small_datalist, readme_command, tmp_path):
    """verify_metadata offline and verify_net_in_out on the network of a 64 px plan of the demo site."""
    (tmp_path / "train").mkdir()
    save_plan(make_plan(site_fingerprint(small_datalist, image_size=64, progress=False)),
              tmp_path / "train" / "nnunet_plans.json")
    log = readme_command("nnunet", "Check the bundle", {"OUT": str(tmp_path)}, in_process=True)
    assert "metadata is verified with no error" in log
    assert "data shape of network is verified with no error" in log


def test_centralized_plan_train_with_it_and_evaluate_pooled(cut_demo_sites, readme_command, tmp_path):
    root = cut_demo_sites({"UCL": (6, 3, 8), "HK": (4, 2, 6)})
    ucl, hk = (root / "prostate" / site / "datalist.json" for site in ("UCL", "HK"))
    pooled = f"['{ucl}','{hk}']"
    env = {"DATALIST": str(ucl), "OUT": str(tmp_path)}

    readme_command("nnunet", "Centralized training (pooled sites)", env, SMALL,
                   replace={"['demo_out/prostate/BIDMC/datalist.json','demo_out/prostate/HK/datalist.json']": pooled})
    plan = load_plan(tmp_path / "central" / "nnunet_plans.json")
    assert plan["sites"] == {"UCL": 6, "HK": 4} and plan["image_size"] == 32
    fingerprints = [site_fingerprint(path, image_size=32, progress=False) for path in (ucl, hk)]
    assert plan == make_plan(merge_fingerprints(fingerprints)), "one plan from the pooled sites' merged fingerprints"
    assert (tmp_path / "central" / "model.pt").is_file() and (tmp_path / "central" / "model_final.pt").is_file()

    readme_command("nnunet", "Train with a given plan", env, SMALL)
    assert load_plan(tmp_path / "with_plan" / "nnunet_plans.json") == plan  # used as given, not re-planned

    (tmp_path / "pooled").mkdir()
    (tmp_path / "pooled" / "train").symlink_to(tmp_path / "central", target_is_directory=True)
    readme_command("nnunet", "Evaluate", {"DATALIST": pooled, "OUT": str(tmp_path / "pooled")}, SMALL)
    summary = json.loads((tmp_path / "pooled" / "eval" / "evaluation_summary.json").read_text())
    assert summary["num_slices"] == 8 + 6 and set(summary["per_site"]) == {"UCL", "HK"}
    assert 0.0 <= summary["iou"] <= summary["dice"] <= 1.0
