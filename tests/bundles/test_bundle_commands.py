"""Each bundle trains one epoch, evaluates and infers on the synthetic demo data with the exact commands
of its docs/README.md, plus the small configuration (vit_tiny encoder, 64 px images)."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image


@pytest.mark.parametrize("bundle", ["unet", "sam", "msa"])
def test_train_evaluate_infer(bundle, small_datalist, tiny_sam_checkpoint, readme_command, tmp_path):
    env = {"DATALIST": str(small_datalist), "OUT": str(tmp_path), "SAM_CKPT": str(tiny_sam_checkpoint)}
    small = ["--image_size", "64", "--max_epochs", "1", "--num_workers", "0"]
    if bundle != "unet":
        small += ["--model_type", "vit_tiny"]
    content = json.loads(small_datalist.read_text())
    test_split, volumes = content["test"], content["metadata"]["volumes"]

    train = readme_command(bundle, "Train", env, small)
    assert (tmp_path / "train" / "model.pt").is_file() and (tmp_path / "train" / "model_final.pt").is_file()
    assert list((tmp_path / "train").glob("events.out.tfevents.*")), "no TensorBoard log"
    assert "val_dice" in train.stdout + train.stderr

    evaluate = readme_command(bundle, "Evaluate", env, small)
    with open(tmp_path / "eval" / "evaluation_per_sample.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["volume"], int(r["slice"])) for r in rows] == [(s["volume"], s["slice"]) for s in test_split]
    summary = json.loads((tmp_path / "eval" / "evaluation_summary.json").read_text())
    assert summary["num_slices"] == len(test_split) and summary["channels"] == ["prostate"]
    assert summary["dice"] == pytest.approx(np.mean([float(r["dice_prostate"]) for r in rows]))
    assert summary["iou"] == pytest.approx(np.mean([float(r["iou_prostate"]) for r in rows]))
    assert 0.0 <= summary["iou"] <= summary["dice"] <= 1.0
    assert set(summary["per_volume_dice_3d"]) == {f"UCL/{test_split[0]['volume']}"}
    assert "Dice" in evaluate.stdout

    readme_command(bundle, "Inference", env, small)
    volume = test_split[0]["volume"]
    image = nib.load(tmp_path / "predictions" / "UCL" / f"{volume}_prostate.nii.gz")
    assert list(image.shape) == volumes[volume]["shape"]
    np.testing.assert_allclose(image.affine, np.asarray(volumes[volume]["affine"]), atol=1e-5)
    assert set(np.unique(np.asanyarray(image.dataobj))) <= {0, 1}
    overlays = sorted((tmp_path / "predictions" / "UCL" / "overlays").glob("*.png"))
    assert len(overlays) == len(test_split)
    assert Image.open(overlays[0]).size == tuple(volumes[volume]["shape"][:2][::-1])
