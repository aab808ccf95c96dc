"""Real mini studies on small sites cut from the synthetic demo data, through tools/run_study.py.

Fast: the centralized MSA baseline only (real bundle training and evaluation). Heavy: a federated
(NVFlare simulator) and a centralized method, then --resume."""

from __future__ import annotations

import ast
import json
import shlex

import pytest


def check_run_against_its_evaluation(out, run: str, sites: list) -> dict:
    """The record's metrics are the bundle evaluation's per-site numbers, held-out site first."""
    record = json.loads((out / "runs" / run / "record.json").read_text())
    assert record["status"] == "finished", record.get("error")
    summary = json.loads((out / "runs" / run / "eval" / "evaluation_summary.json").read_text())
    assert list(summary["per_site"]) == sites
    assert record["metrics"]["held_out"]["dice"] == summary["per_site"]["UCL"]["dice"]
    assert record["metrics"]["held_out"]["dice_3d"] == summary["per_site"]["UCL"]["dice_3d"]
    assert record["metrics"]["sources"] == {s: {k: summary["per_site"][s][k] for k in record["metrics"]["sources"][s]}
                                            for s in sites[1:]}
    assert 0.0 <= record["metrics"]["held_out"]["dice"] <= 1.0
    return record


def test_centralized_study_on_demo_data(cli, small_root, tmp_path, demo_args, csv_rows, capsys):
    out = tmp_path / "study"
    assert cli.main(demo_args(small_root, out, ["msa"])) == 0
    record = check_run_against_its_evaluation(out, "msa-pt__UCL", ["UCL", "HK", "ISBI1.5"])
    train = record["commands"][0]["command"]
    argv = shlex.split(train)
    # pooled training on the source sites only, for rounds x epochs = 2 epochs, random SAM weights (-PT)
    assert ast.literal_eval(argv[argv.index("--datalist") + 1]) == [
        str(small_root / "prostate" / site / "datalist.json") for site in ("HK", "ISBI1.5")]
    assert "--max_epochs 2" in train and "--model_type vit_tiny" in train and "--sam_checkpoint" not in train
    assert "ckpt_path" in record["commands"][1]["command"] and record["model"].endswith("runs/msa-pt__UCL/train/model_final.pt")
    rows = csv_rows(out / "results.csv")
    assert [(r["label"], r["held_out"], r["paper_dice"]) for r in rows] == [("MSA (-PT) [vit_tiny]", "UCL", "0.482")]
    assert float(rows[0]["dice"]) == record["metrics"]["held_out"]["dice"]
    text = (out / "results.md").read_text()
    assert "SYNTHETIC DATA" in text and "RANDOM SAM WEIGHTS" in text and "--profile demo" in text
    assert f"| UCL | {record['metrics']['held_out']['dice']:.4f} / 0.482 |" in text
    assert (out / "plots" / "dice_UCL.png").stat().st_size > 10_000
    assert not (out / "plots" / "learning_curves.png").exists()  # no federated run, no per-round records
    assert "| UCL |" in capsys.readouterr().out


@pytest.mark.heavy
def test_federated_and_centralized_study_then_resume(cli, small_root, tmp_path, demo_args, csv_rows):
    out = tmp_path / "study"
    assert cli.main(demo_args(small_root, out, ["fedmsa", "unet"])) == 0
    fed = check_run_against_its_evaluation(out, "fedmsa-pt__UCL", ["UCL", "HK", "ISBI1.5"])
    assert [h["round"] for h in fed["history"]] == [0, 1]
    assert set(fed["history"][0]["sites"]) == {"HK", "ISBI1_5"}  # the held-out client never trains
    assert fed["commands"][0]["command"].split()[1] == "simulator"
    assert fed["commands"][0]["site_config"]["sam_checkpoint"].endswith("weights/sam_vit_tiny_random_seed1337.pth")
    job = json.loads((out / "runs" / "fedmsa-pt__UCL" / "job" / "fedmsa_prostate_UCL" / "meta.json").read_text())
    assert sorted(job["deploy_map"]["app"]) == ["HK", "ISBI1_5", "server"]  # no cross-site eval: UCL gets no app
    check_run_against_its_evaluation(out, "unet__UCL", ["UCL", "HK", "ISBI1.5"])
    assert (out / "plots" / "learning_curves.png").stat().st_size > 10_000
    assert [r["label"] for r in csv_rows(out / "results.csv")] == ["FedMSA (-PT) [vit_tiny]", "U-Net"]
    before = (out / "runs" / "fedmsa-pt__UCL" / "record.json").read_text()
    assert cli.main(demo_args(small_root, out, ["fedmsa", "unet"], "--resume")) == 0
    assert (out / "runs" / "fedmsa-pt__UCL" / "record.json").read_text() == before
    assert "finished earlier, skipped (--resume)" in (out / "study.log").read_text()
