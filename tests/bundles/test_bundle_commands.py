"""Each bundle trains one epoch, evaluates and infers on the synthetic demo data with the exact commands
of its docs/README.md, plus the small configuration (vit_tiny encoder, 64 px images)."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image


@pytest.mark.parametrize("bundle", ["unet", "sam", "msa", "nnunet"])
def test_train_evaluate_infer(bundle, small_datalist, tiny_sam_checkpoint, readme_command, tmp_path):
    env = {"DATALIST": str(small_datalist), "OUT": str(tmp_path), "SAM_CKPT": str(tiny_sam_checkpoint)}
    small = ["--image_size", "64", "--max_epochs", "1", "--num_workers", "0"]
    if bundle in ("sam", "msa"):
        small += ["--model_type", "vit_tiny"]
    if bundle == "nnunet":  # no test-time mirroring (4x CPU time); 2 batches per epoch
        small += ["--use_mirroring", "False", "--iterations_per_epoch", "2"]
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


def _rgb_two_channel_site(folder):
    """Six synthetic 2D RGB uint8 images (40 x 48) with two label channels (a disc and a cup inside it),
    in the prepared-data format of the fundus datasets (slice null)."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    yy, xx = np.mgrid[:40, :48]
    samples = []
    for i in range(6):
        cy, cx = 20 + rng.integers(-4, 5), 24 + rng.integers(-4, 5)
        disc, cup = (yy - cy) ** 2 + (xx - cx) ** 2 < 100, (yy - cy) ** 2 + (xx - cx) ** 2 < 25
        image = rng.integers(0, 80, (3, 40, 48)).astype(np.uint8)
        image[:, disc] += 100
        image[:, cup] += 60
        np.save(folder / "images" / f"img{i}.npy", image)
        np.save(folder / "images" / f"img{i}_label.npy", np.stack([disc, cup]).astype(np.uint8))
        samples.append({"image": f"images/img{i}.npy", "label": f"images/img{i}_label.npy", "volume": f"img{i}", "slice": None})
    metadata = {"site": "RGB", "dataset": "fundus", "num_volumes": 6, "num_slices": 6, "label_channels": ["OD", "OC"],
                "synthetic": True, "source_release": "test", "volumes": {s["volume"]: {"source": "x.png", "shape": [40, 48, 3],
                                                                                         "affine": None, "slice_axis": None} for s in samples}}
    content = {"training": samples[:4], "validation": samples[4:], "test": samples, "metadata": metadata}
    (folder / "datalist.json").write_text(json.dumps(content))
    return folder / "datalist.json"


@pytest.mark.parametrize("bundle, options", [
    ("unet", ["--num_classes", "2", "--batch_size", "2"]),
    # nnU-Net: 3 input channels and two overlapping label channels -> region training, one logit per channel
    ("nnunet", ["--use_mirroring", "False", "--iterations_per_epoch", "1"]),
])
def test_on_2d_rgb_images_with_two_label_channels(bundle, options, readme_command, tmp_path):
    env = {"DATALIST": str(_rgb_two_channel_site(tmp_path / "RGB")), "OUT": str(tmp_path / "out")}
    small = ["--image_size", "32", "--max_epochs", "1", "--num_workers", "0", *options]
    readme_command(bundle, "Train", env, small)
    readme_command(bundle, "Evaluate", env, small)
    summary = json.loads((tmp_path / "out" / "eval" / "evaluation_summary.json").read_text())
    assert set(summary["per_channel"]) == {"OD", "OC"} and summary["num_slices"] == 6
    assert "dice_3d" not in summary  # 2D images: no volumes
    if bundle == "nnunet":
        return  # its inference path is test_train_evaluate_infer's; the writer is the unet's below
    readme_command(bundle, "Inference", env, small)
    for i in range(6):
        for channel in ("OD", "OC"):
            mask = np.asarray(Image.open(tmp_path / "out" / "predictions" / "RGB" / f"img{i}_{channel}.png"))
            assert mask.shape == (40, 48) and set(np.unique(mask)) <= {0, 255}
    assert len(list((tmp_path / "out" / "predictions" / "RGB" / "overlays").glob("img*.png"))) == 6
