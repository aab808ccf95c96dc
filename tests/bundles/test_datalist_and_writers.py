"""Datalist reading / pooling and the inference writers' restacking, on tiny files in the brief's format."""

from __future__ import annotations

import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from fedfms.bundle.datalist import dataset_dir, label_channels, load_datalist
from fedfms.bundle.writers import PredictionWriter


def _site(root, site, volumetric=True, channels=("prostate",)):
    """A site with one volume of 3 slices (shape 4 x 5 x 3, slice axis 2) or one 2D RGB image."""
    folder = root / site
    folder.mkdir(parents=True)
    (folder / "images").mkdir()
    samples, volumes = [], {}
    if volumetric:
        volumes["Case00"] = {"source": "Case00.nii.gz", "shape": [4, 5, 3], "affine": np.diag([2.0, 2.0, 3.0, 1.0]).tolist(), "slice_axis": 2}
        for k in range(3):
            np.save(folder / "images" / f"s{k}.npy", np.full((1, 4, 5), 0.5, np.float16))
            np.save(folder / "images" / f"l{k}.npy", np.zeros((len(channels), 4, 5), np.uint8))
            samples.append({"image": f"images/s{k}.npy", "label": f"images/l{k}.npy", "volume": "Case00", "slice": k})
    else:
        volumes["img7"] = {"source": "img7.png", "shape": [4, 5, 3], "affine": None, "slice_axis": None}
        np.save(folder / "images" / "img7.npy", np.full((3, 4, 5), 200, np.uint8))
        np.save(folder / "images" / "img7_l.npy", np.zeros((len(channels), 4, 5), np.uint8))
        samples.append({"image": "images/img7.npy", "label": "images/img7_l.npy", "volume": "img7", "slice": None})
    content = {
        "training": samples[1:], "validation": samples[:1], "test": samples,
        "metadata": {"site": site, "dataset": "t", "num_volumes": 1, "num_slices": len(samples), "label_channels": list(channels),
                     "synthetic": True, "source_release": "test", "volumes": volumes},
    }
    (folder / "datalist.json").write_text(json.dumps(content))
    return folder / "datalist.json"


def test_pooling_resolves_paths_and_marks_2d_slices(tmp_path):
    a, b = _site(tmp_path, "A"), _site(tmp_path, "B", volumetric=False)
    pooled = load_datalist([a, b], "test")
    assert [(s["site"], s["volume"], s["slice"]) for s in pooled] == [("A", "Case00", 0), ("A", "Case00", 1), ("A", "Case00", 2), ("B", "img7", -1)]
    assert pooled[0]["image"] == str(tmp_path / "A" / "images" / "s0.npy")
    assert load_datalist(str(a), "training") == pooled[1:3]
    assert dataset_dir([a, b]) == str(tmp_path) and label_channels([a, b]) == ["prostate"]
    with pytest.raises(ValueError, match="split must be"):
        load_datalist(a, "train")
    with pytest.raises(ValueError, match="disagree on label_channels"):
        label_channels([a, _site(tmp_path, "C", channels=("OD", "OC"))])


def test_datalist_errors_name_the_file(tmp_path):
    path = _site(tmp_path, "A")
    content = json.loads(path.read_text())
    del content["test"][1]["volume"]
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=rf"{path}: test\[1\] lacks keys \['volume'\]"):
        load_datalist(path, "test")
    with pytest.raises(FileNotFoundError, match="nowhere.json does not exist"):
        load_datalist(tmp_path / "nowhere.json", "test")
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(IsADirectoryError, match="folder.json is a folder, expected its datalist.json file"):
        load_datalist(tmp_path / "folder.json", "test")
    with pytest.raises(ValueError, match="datalist is not set"):
        load_datalist(None, "test")


def _engine(samples, preds):
    batch = [
        {**s, "image": MetaTensor(torch.zeros(3, 8, 8), meta={"filename_or_obj": s["image"]}),
         "label": MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": s["label"]})}
        for s in samples
    ]
    return SimpleNamespace(state=SimpleNamespace(batch=batch, output=[{"pred": p} for p in preds]))


def test_writer_restacks_volume_slices_with_source_geometry_and_writes_2d_png(tmp_path):
    a, b = _site(tmp_path, "A"), _site(tmp_path, "B", volumetric=False)
    writer = PredictionWriter(str(tmp_path / "out"), [str(a), str(b)], ["prostate"])
    samples = load_datalist([a, b], "test")
    # predictions at the network's (smaller) output size 2 x 2: slice 1 and the 2D image get the top-left quadrant
    quadrant = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    preds = [torch.zeros(1, 2, 2), quadrant, None, quadrant]
    # slice 2 is not predicted at all (e.g. not in the split): it must stay empty
    writer.collect(_engine([samples[0], samples[1], samples[3]], [preds[0], preds[1], preds[3]]))
    writer.write_volumes(None)

    volume = nib.load(tmp_path / "out" / "A" / "Case00_prostate.nii.gz")
    np.testing.assert_array_equal(volume.affine, np.diag([2.0, 2.0, 3.0, 1.0]))
    data = np.asanyarray(volume.dataobj)
    assert data.shape == (4, 5, 3)
    expected = np.zeros((4, 5), np.uint8)
    expected[:2, :2] = 1  # nearest-exact upsampling of the 2 x 2 quadrant to 4 x 5 covers rows 0-1, columns 0-1
    np.testing.assert_array_equal(data[..., 1], expected)
    assert data[..., 0].sum() == 0 and data[..., 2].sum() == 0

    png = np.asarray(Image.open(tmp_path / "out" / "B" / "img7_prostate.png"))
    np.testing.assert_array_equal(png, expected * 255)
    overlays = sorted(p.name for p in (tmp_path / "out").glob("*/overlays/*.png"))
    assert overlays == ["Case00_s0000.png", "Case00_s0001.png", "img7.png"]
