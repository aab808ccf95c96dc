"""The demo's report, fast: the held-out table has a stand-in row and a random (-PT) row, the overlay
grid is written with one row per slice and one column per model, the slices shown and the predicted
masks come from the held-out site's data at its source size (the whole demo runs in test_demo.py, heavy)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedfms.orchestration.demo import (DEMO_PROFILE, RUNS, DemoOptions, held_out_table, overlay_samples, predict_masks,
                                       run_names, save_initial_model, weights_labels)
from fedfms.core.wire import BUNDLE_IN_APP
from fedfms.networks import write_random_sam_checkpoint
from fedfms.orchestration.jobs import JobSettings, write_job
from fedfms.orchestration.standin import STANDIN_LABEL
from fedfms.reporting.overlays import overlay_grid

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ("Dice before", "Dice after", "3D Dice before", "3D Dice after")


def test_held_out_table_has_a_standin_row_and_a_random_row():
    options = DemoOptions()
    names, labels = run_names(options), weights_labels(options)
    rows = {"pretrained": dict(zip(COLUMNS, (0.1, 0.8, 0.2, 0.85))), "random": dict(zip(COLUMNS, (0.1, 0.4, 0.2, 0.5)))}
    table = held_out_table("UCL", {f"{names[n]}: {labels[n]}": rows[n] for n in RUNS}).splitlines()
    assert table[0] == "| SAM weights | " + " | ".join(f"UCL {c}" for c in COLUMNS) + " |"
    assert len(table) == 4
    assert table[2].startswith("| stand-in: " + STANDIN_LABEL) and table[2].endswith("| 0.1000 | 0.8000 | 0.2000 | 0.8500 |")
    assert "synthetic shapes" in table[2] and "SA-1B" in table[2]
    assert table[3].startswith("| random (-PT): RANDOM SAM weights, seed 1337") and table[3].endswith("| 0.5000 |")


def test_real_sam_weights_are_named_instead_of_the_standin():
    options = DemoOptions(sam_checkpoint=Path("/weights/sam_vit_b_01ec64.pth"))
    assert run_names(options)["pretrained"] == "SAM"
    assert weights_labels(options)["pretrained"] == "SAM checkpoint sam_vit_b_01ec64.pth"
    assert "-PT" in weights_labels(options)["random"]


def test_overlay_grid_is_written_with_a_cell_per_slice_and_model(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.random((3, 40, 40), dtype=np.float32) for _ in range(3)]
    labels = [np.zeros((1, 40, 40), np.uint8) for _ in range(3)]
    for label in labels:
        label[0, 10:30, 12:28] = 1
    predictions = {name: [np.roll(label, shift, axis=-1) for label in labels]
                   for name, shift in (("before", 9), ("after", 1))}
    path = overlay_grid(images, labels, predictions, tmp_path / "grid.png", row_titles=["a", "b", "c"],
                        cell_titles={"after": ["Dice 0.95"] * 3}, title="SYNTHETIC")
    assert path == tmp_path / "grid.png" and [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temp left
    width, height = Image.open(path).size
    # 4 columns (image, ground truth, before, after) of 3 rows: figsize 1.9 in per cell at 100 dpi
    assert width == round(1.9 * 4 * 100) and height == round((1.9 * 3 + 0.5) * 100)
    with pytest.raises(ValueError, match="one label and one prediction per image"):
        overlay_grid(images, labels[:2], predictions, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"row 0: image \(40, 40\) but masks"):
        overlay_grid(images, [label[:, :20] for label in labels], predictions, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_overlay_samples_show_prostate_from_several_volumes(demo_data):
    datalist = demo_data / "prostate" / "UCL" / "datalist.json"
    samples = overlay_samples(datalist, count=4)
    test = {(s["volume"], s["slice"]) for s in json.loads(datalist.read_text())["test"]}
    assert len(samples) == 4 and all((s["volume"], s["slice"]) in test and s["site"] == "UCL" for s in samples)
    assert all(np.load(s["label"]).any() for s in samples)
    assert len({s["volume"] for s in samples}) > 1


def test_predicted_masks_are_binary_at_the_source_size(demo_data, tmp_path):
    sam_checkpoint = write_random_sam_checkpoint(tmp_path / "sam_random.pth", DEMO_PROFILE.model_type, 0)  # synthetic
    samples = overlay_samples(demo_data / "prostate" / "UCL" / "datalist.json", count=2)
    settings = JobSettings("fedmsa", "prostate", DEMO_PROFILE, held_out=("UCL",))
    overrides = {**settings.bundle_overrides(), "sam_checkpoint": str(sam_checkpoint), "device": "cpu"}
    bundle = write_job(settings, tmp_path / "jobs", REPO / "bundles") / "app" / BUNDLE_IN_APP  # as the demo does
    ckpt = save_initial_model(bundle, sam_checkpoint, tmp_path / "initial_global_model.pt")
    masks = predict_masks(bundle, overrides, ckpt, samples)
    for sample, mask in zip(samples, masks):
        assert mask.shape == np.load(sample["label"]).shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}


def test_demo_help_names_the_standin_and_the_random_run(capsys):
    spec = importlib.util.spec_from_file_location("demo_tool", REPO / "tools" / "demo.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 0
    assert "STAND-IN for SAM's SA-1B weights" in text and "-PT" in text and "--sam-checkpoint" in text


def test_evaluation_gives_the_demo_its_log_handlers_back(tmp_path, monkeypatch):
    """The bundle's logging.conf points the root logger at the evaluation log (stdout is redirected
    there), which is closed after the evaluations: the demo's later log lines must still reach its own
    handler."""
    import logging
    import logging.config

    import monai.bundle

    from fedfms.orchestration.demo import evaluate

    bundle = Path(__file__).resolve().parents[2] / "bundles" / "msa"

    def bundle_run(*args, output_dir, **kwargs):  # what ConfigWorkflow does with the bundle's logging.conf
        logging.config.fileConfig(bundle / "configs" / "logging.conf", disable_existing_loggers=False)
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "evaluation_summary.json").write_text(json.dumps({"dice": 0.5, "dice_3d": 0.25}))

    monkeypatch.setattr(monai.bundle, "run", bundle_run)
    root = logging.getLogger()
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    keep = Keep(level=logging.INFO)
    monkeypatch.setattr(root, "handlers", [keep])
    monkeypatch.setattr(root, "level", logging.INFO)
    with open(tmp_path / "evaluation.log", "w") as log_file:
        scores = evaluate(bundle, tmp_path / "datalist.json", tmp_path / "model.pt", tmp_path / "eval", {}, log_file)
    logging.getLogger("fedfms.orchestration.demo").info("after the evaluations")
    assert scores == {"dice": 0.5, "dice_3d": 0.25}
    assert root.handlers == [keep] and records == ["after the evaluations"]

