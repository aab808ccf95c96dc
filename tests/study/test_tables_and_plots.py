"""The study's tables and plots on known run records: numbers, paper values, means, failures, labels."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from fedfms.reporting.study_plots import plot_learning_curves, plot_site_bars
from fedfms.reporting.study_tables import result_rows, results_markdown, write_results
from fedfms.registry.paper import PAPER_TABLE1, paper_dice


def record(name, label, held_out, dice, paper_row=None, status="finished", sources=(0.6, 0.8), dice_3d=None, history=None):
    metrics = None
    if status == "finished":
        held = {"dice": dice, "iou": dice / 2}
        if dice_3d is not None:
            held["dice_3d"] = dice_3d
        metrics = {"held_out": held, "sources": {f"S{i}": {"dice": d} for i, d in enumerate(sources)}}
    return {"name": name, "label": label, "method": name.split("__")[0], "federated": name.startswith("fed"),
            "pretrained": None, "held_out": held_out, "status": status, "paper_row": paper_row, "metrics": metrics,
            "history": history, "error": None if status == "finished" else "StepError: exit code 1"}


@pytest.fixture
def records():
    history = [{"round": 0, "weighted_val_dice": 0.1}, {"round": 1, "weighted_val_dice": 0.5}]
    return [
        record("fedsam__UCL", "FedSAM", "UCL", 0.5, "FedSAM", dice_3d=0.7, history=history),
        record("unet__UCL", "U-Net", "UCL", 0.25),
        record("fedsam__HK", "FedSAM", "HK", 0.7, "FedSAM", dice_3d=0.9, history=history),
        record("unet__HK", "U-Net", "HK", None, status="failed"),
    ]


META = {"command": "python tools/run_study.py --dataset prostate ...", "dataset": "prostate", "wall_time_s": 12.0,
        "settings": {"profile": "demo", "rounds": 2}, "labels": ["SYNTHETIC DATA", "RANDOM SAM WEIGHTS"]}


def test_paper_table_matches_the_headline_averages():
    # REFERENCE.md "Headline results": average Dice over unseen sites.
    assert PAPER_TABLE1["prostate"]["FedSAM"]["average"]["prostate"][0] == 0.819
    assert PAPER_TABLE1["brain"]["FedMSA"]["average"]["ET"][0] == 0.875
    assert PAPER_TABLE1["nuclei"]["SAM"]["average"]["nuclei"][0] == 0.740
    for dataset, rows in PAPER_TABLE1.items():
        assert len(rows) == 12
        for row, sites in rows.items():  # the paper's averages are the means of its sites (to rounding)
            per_site = [paper_dice(dataset, row, s) for s in sites if s != "average"]
            assert abs(sum(per_site) / len(per_site) - paper_dice(dataset, row, "average")) < 0.006, (dataset, row)
    assert paper_dice("fundus", "FedSAM", "REFUGE") == pytest.approx((0.869 + 0.873) / 2)
    assert paper_dice("prostate", None, "UCL") is None and paper_dice("prostate", "FedSAM", "nowhere") is None


def test_rows_carry_ours_and_the_papers_numbers(records):
    rows = result_rows(records, "prostate")
    first = rows[0]
    assert (first["dice"], first["iou"], first["dice_3d"], first["source_dice"]) == (0.5, 0.25, 0.7, pytest.approx(0.7))
    assert (first["paper_dice"], first["paper_iou"]) == (0.844, 0.809)  # Table 1: FedSAM tested on UCL
    assert rows[2]["paper_dice"] == 0.841  # FedSAM tested on HK
    assert rows[1]["paper_dice"] is None and rows[1]["dice_3d"] is None
    assert rows[3]["status"] == "failed" and rows[3]["dice"] is None and rows[3]["error"].startswith("StepError")


def test_markdown_layout_means_and_failures(records):
    text = results_markdown(result_rows(records, "prostate"), META)
    assert text.index("> **SYNTHETIC DATA**") < text.index("## Unseen-site Dice")
    assert "> **RANDOM SAM WEIGHTS**" in text and META["command"] in text
    dice = text.split("## Unseen-site Dice (ours / paper)")[1].split("##")[0]
    assert "| held-out site | FedSAM | U-Net |" in dice
    assert "| UCL | 0.5000 / 0.844 | 0.2500 / - |" in dice
    assert "| HK | 0.7000 / 0.841 | failed / - |" in dice
    # Means over the same held-out sites for ours and the paper; the failed run is left out (n=1).
    assert "| mean over held-out sites | 0.6000 / 0.843 (n=2) | 0.2500 / - (n=1) |" in dice
    three_d = text.split("## Unseen-site 3D Dice")[1].split("##")[0]
    assert "| UCL | 0.7000 | - |" in three_d and "0.8000 (n=2)" in three_d
    sources = text.split("## Source sites")[1].split("##")[0]
    assert "| UCL | 0.7000 | 0.7000 |" in sources
    assert "## Failed runs" in text and "- `unet__HK` (U-Net, HK held out): StepError: exit code 1" in text


def test_files_record_command_and_settings(records, tmp_path, csv_rows):
    files = write_results(tmp_path, result_rows(records, "prostate"), META)
    assert [f.name for f in files] == ["results.md", "results.csv", "results.json"]
    csv_text = (tmp_path / "results.csv").read_text()
    assert csv_text.startswith(f"# command: {META['command']}\n# settings: {json.dumps(META['settings'])}\n# SYNTHETIC DATA\n")
    rows = csv_rows(tmp_path / "results.csv")
    assert [(r["run"], r["status"], r["dice"], r["paper_dice"]) for r in rows] == [
        ("fedsam__UCL", "finished", "0.5", "0.844"), ("unet__UCL", "finished", "0.25", ""),
        ("fedsam__HK", "finished", "0.7", "0.841"), ("unet__HK", "failed", "", "")]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["command"] == META["command"] and saved["labels"] == META["labels"] and len(saved["rows"]) == 4
    assert not list(tmp_path.glob("*.tmp"))


def test_plots_are_written(records, tmp_path):
    rows = result_rows(records, "prostate")
    bars = plot_site_bars(rows, "HK", tmp_path / "plots" / "dice_HK.png", META["labels"], META["command"])
    with Image.open(bars) as image:
        assert image.size[0] >= 800 and image.size[1] >= 500
        assert image.info["Description"] == META["command"]
    curves = plot_learning_curves(records, tmp_path / "plots" / "curves.png", META["labels"])
    with Image.open(curves) as image:
        assert image.size[0] >= 800  # one panel per held-out site (two here)
    assert plot_learning_curves([r for r in records if not r["history"]], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
