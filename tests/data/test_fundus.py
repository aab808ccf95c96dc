"""Fundus preparer on small files generated in the public releases' layouts and encodings (synthetic).

Each generator writes what the release ships: REFUGE JPEG images with 8-bit BMP masks (0 cup,
128 disc rim, 255 background); ORIGA / G1020 JPEG images with PNG index masks (0/1/2, ORIGA also a
.mat); Drishti-GS1 PNG images with per-image expert soft maps. Only the pixel sizes are small.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from fedfms.data import DataError, get_preparer, prepare_dataset
from fedfms.data.writer import process_case


def disc_cup(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Concentric disc and cup masks at a seed-dependent position."""
    rng = np.random.default_rng(seed)
    cy, cx = rng.integers(h // 3, 2 * h // 3), rng.integers(w // 3, 2 * w // 3)
    yy, xx = np.mgrid[:h, :w]
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return r2 <= (h // 5) ** 2, r2 <= (h // 10) ** 2


def fundus_rgb(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def refuge_mask(disc: np.ndarray, cup: np.ndarray) -> np.ndarray:
    return np.where(cup, 0, np.where(disc, 128, 255)).astype(np.uint8)


def index_mask(disc: np.ndarray, cup: np.ndarray) -> np.ndarray:
    return (disc | cup).astype(np.uint8) + cup


def make_refuge(root: Path, h: int = 48, w: int = 50) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """REFUGE 2018 layout: train (Glaucoma / Non-Glaucoma, with Disc_Cup_Fovea_Illustration), validation, test (G / N)."""
    files = {
        "g0001": ("Training400/Glaucoma", "Annotation-Training400/Disc_Cup_Masks/Glaucoma"),
        "n0001": ("Training400/Non-Glaucoma", "Annotation-Training400/Disc_Cup_Masks/Non-Glaucoma"),
        "V0001": ("REFUGE-Validation400", "REFUGE-Validation400-GT/Disc_Cup_Masks"),
        "T0001": ("Test400", "REFUGE-Test-GT/Disc_Cup_Masks/G"),
        "T0002": ("Test400", "REFUGE-Test-GT/Disc_Cup_Masks/N"),
    }
    truth = {}
    for i, (stem, (img_dir, mask_dir)) in enumerate(files.items()):
        disc, cup = disc_cup(h, w, i)
        save(root / "REFUGE" / img_dir / f"{stem}.jpg", fundus_rgb(h, w, i), quality=95)
        save(root / "REFUGE" / mask_dir / f"{stem}.bmp", refuge_mask(disc, cup))
        if img_dir.startswith("Training400"):  # the training annotations also ship outlined copies
            illustration = mask_dir.replace("Disc_Cup_Masks", "Disc_Cup_Fovea_Illustration")
            save(root / "REFUGE" / illustration / f"{stem}.jpg", fundus_rgb(h, w, 100 + i))
        truth[stem] = disc, cup
    return truth


def make_origa(root: Path, h: int = 40, w: int = 52, mat: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ORIGA: Images/NNN.jpg with Masks/NNN.png (0/1/2), or (mat=True) Semi-automatic/NNN.mat instead."""
    truth = {}
    for i, stem in enumerate(["001", "002", "003"]):
        disc, cup = disc_cup(h, w, 10 + i)
        save(root / "ORIGA" / "Images" / f"{stem}.jpg", fundus_rgb(h, w, 10 + i))
        if mat:
            (root / "ORIGA" / "Semi-automatic").mkdir(parents=True, exist_ok=True)
            savemat(root / "ORIGA" / "Semi-automatic" / f"{stem}.mat", {"mask": index_mask(disc, cup).astype(float)})
        else:
            save(root / "ORIGA" / "Masks" / f"{stem}.png", index_mask(disc, cup))
        truth[stem] = disc, cup
    (root / "ORIGA" / "OrigaList.csv").write_text("Filename,Eye,ExpCDR,Set,Glaucoma\n001.jpg,OD,0.5,A,0\n")
    return truth


def make_g1020(root: Path, h: int = 44, w: int = 40) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """G1020: Images/image_N.jpg + image_N.json, Masks/image_N.png; image_2 has no cup annotation."""
    truth = {}
    for i in range(4):
        stem = f"image_{i}"
        disc, cup = disc_cup(h, w, 20 + i)
        if i == 2:
            cup = np.zeros_like(cup)
        save(root / "G1020" / "Images" / f"{stem}.jpg", fundus_rgb(h, w, 20 + i))
        shapes = [{"label": "disc", "points": [[1, 1], [5, 1], [5, 5]], "shape_type": "polygon"}]
        (root / "G1020" / "Images" / f"{stem}.json").write_text(json.dumps({"shapes": shapes}))
        save(root / "G1020" / "Masks" / f"{stem}.png", index_mask(disc, cup))
        truth[stem] = disc, cup
    (root / "G1020" / "G1020.csv").write_text("imageID,binaryLabels\nimage_0.jpg,0\n")
    return truth


def make_drishti(root: Path, h: int = 36, w: int = 54) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Drishti-GS1: Training/Test Images and GT soft maps (grey = share of 4 experts)."""
    base = root / "Drishti-GS1" / "Drishti-GS1_files"
    truth = {}
    for i, (split, gt, stem) in enumerate([("Training", "GT", "drishtiGS_002"), ("Training", "GT", "drishtiGS_004"),
                                           ("Test", "Test_GT", "drishtiGS_001")]):
        disc, cup = disc_cup(h, w, 30 + i)
        save(base / split / "Images" / f"{stem}.png", fundus_rgb(h, w, 30 + i))
        soft = base / split / gt / stem / "SoftMap"
        # 4 experts: all agree inside the disc, 1 of 4 (grey 64, below the threshold) just above it
        halo = np.roll(disc, -1, axis=0) & ~disc
        save(soft / f"{stem}_ODsegSoftmap.png", np.where(disc, 255, np.where(halo, 64, 0)).astype(np.uint8))
        save(soft / f"{stem}_cupsegSoftmap.png", np.where(cup, 191, 0).astype(np.uint8))
        (base / split / gt / stem / "AvgBoundary").mkdir(parents=True)
        truth[stem] = disc, cup
    return truth


MAKERS = {"REFUGE": make_refuge, "ORIGA": make_origa, "G1020": make_g1020, "Drishti-GS1": make_drishti}


def labels_of(site_dir: Path) -> dict[str, np.ndarray]:
    datalist = json.loads((site_dir / "datalist.json").read_text())
    return {e["volume"]: np.load(site_dir / e["label"]) for e in datalist["test"]}


def test_cli_prepares_all_four_sites(tmp_path, prepare_data_cli, capsys, digest):
    truth = {site: make(tmp_path / "src") for site, make in MAKERS.items()}
    out = tmp_path / "out"
    assert prepare_data_cli("fundus", "--src", str(tmp_path / "src"), "--out", str(out)) == 0
    printed = capsys.readouterr().out
    first = digest(out)
    assert prepare_data_cli("fundus", "--src", str(tmp_path / "src"), "--out", str(out)) == 0
    assert digest(out) == first  # re-running is idempotent (2D releases too)
    index = json.loads((out / "fundus" / "dataset.json").read_text())
    # G1020 image_2 has no cup annotation and is left out by default
    expected = {"REFUGE": 5, "ORIGA": 3, "G1020": 3, "Drishti-GS1": 3}
    assert {s: v["num_samples"] for s, v in index["sites"].items()} == expected
    for site, n in expected.items():
        site_dir = out / "fundus" / site
        datalist = json.loads((site_dir / "datalist.json").read_text())
        meta = datalist["metadata"]
        assert meta["label_channels"] == ["OD", "OC"] and meta["synthetic"] is False
        assert meta["options"]["od"] == "disc"
        assert len(datalist["training"]) + len(datalist["validation"]) == n and len(datalist["validation"]) == 1
        for entry in datalist["test"]:
            image, label = np.load(site_dir / entry["image"]), np.load(site_dir / entry["label"])
            disc, cup = truth[site][entry["volume"]]
            assert image.dtype == np.uint8 and image.shape == (3, *disc.shape)
            assert label.dtype == np.uint8 and label.shape == (2, *disc.shape)
            np.testing.assert_array_equal(label[0], disc)  # OD = whole disc (paper)
            np.testing.assert_array_equal(label[1], cup)
    assert "image_2" not in labels_of(out / "fundus" / "G1020")
    # ... but not silently: the summary and the metadata name it with the reason
    (skipped,) = json.loads((out / "fundus" / "G1020" / "datalist.json").read_text())["metadata"]["skipped"]
    assert skipped["case"] == "image_2" and skipped["source"] == "G1020/Masks/image_2.png"
    assert "no cup annotation" in skipped["problem"] and "--g1020-missing-cup" in skipped["problem"]
    (row,) = [line.split() for line in printed.splitlines() if line.startswith("G1020 ")]
    assert row == ["G1020", "3", "3", "2", "1", "1"]  # volumes, samples, train, val, skipped
    assert f"skipped G1020/image_2: G1020/Masks/image_2.png: {skipped['problem']}" in printed


def test_refuge_encoding_and_rim_convention(tmp_path):
    src = tmp_path / "src"
    mask = np.full((6, 8), 255, np.uint8)
    mask[1:5, 2:7] = 128
    mask[2:4, 3:5] = 0
    save(src / "REFUGE" / "Test400" / "T0001.jpg", fundus_rgb(6, 8, 0))
    save(src / "REFUGE" / "REFUGE-Test-GT" / "Disc_Cup_Masks" / "N" / "T0001.bmp", mask)
    preparer = get_preparer("fundus")
    (case,) = preparer.iter_cases(src, "REFUGE")
    (disc_sample,), _ = process_case(case)
    np.testing.assert_array_equal(disc_sample.label[0], mask <= 128)  # disc = grey and black
    np.testing.assert_array_equal(disc_sample.label[1], mask == 0)  # cup = black
    (case,) = preparer.iter_cases(src, "REFUGE", od="rim")
    (rim_sample,), _ = process_case(case)
    np.testing.assert_array_equal(rim_sample.label[0], mask == 128)  # reference code: disc minus cup
    np.testing.assert_array_equal(rim_sample.label[1], mask == 0)


def test_drishti_soft_map_threshold(tmp_path):
    src = tmp_path / "src"
    base = src / "Drishti-GS1" / "Drishti-GS1_files" / "Training"
    soft = np.array([[0, 64, 128, 191, 255]], np.uint8).repeat(3, axis=0)
    save(base / "Images" / "drishtiGS_002.png", fundus_rgb(3, 5, 1))
    save(base / "GT" / "drishtiGS_002" / "SoftMap" / "drishtiGS_002_ODsegSoftmap.png", soft)
    save(base / "GT" / "drishtiGS_002" / "SoftMap" / "drishtiGS_002_cupsegSoftmap.png", np.where(soft == 255, 255, 0).astype(np.uint8))
    for threshold, expected in [(100, [0, 0, 1, 1, 1]), (200, [0, 0, 0, 0, 1])]:
        (case,) = get_preparer("fundus").iter_cases(src, "Drishti-GS1", drishti_threshold=threshold)
        (sample,), _ = process_case(case)
        np.testing.assert_array_equal(sample.label[0], np.array([expected] * 3))
        np.testing.assert_array_equal(sample.label[1], np.array([[0, 0, 0, 0, 1]] * 3))


def test_origa_matlab_annotations(tmp_path):
    truth = make_origa(tmp_path / "src", mat=True)
    cases = list(get_preparer("fundus").iter_cases(tmp_path / "src", "ORIGA"))
    assert [c.case_id for c in cases] == ["001", "002", "003"] and cases[2].label_source.endswith("003.mat")
    for case in cases:
        (sample,), _ = process_case(case)
        np.testing.assert_array_equal(sample.label, np.stack(truth[case.case_id]))


def test_g1020_missing_cup_kept_as_empty_channel(tmp_path):
    truth = make_g1020(tmp_path / "src")
    cases = {c.case_id: c for c in get_preparer("fundus").iter_cases(tmp_path / "src", "G1020", g1020_missing_cup="empty")}
    assert sorted(cases) == sorted(truth)
    (sample,), _ = process_case(cases["image_2"])
    assert sample.label[0].any() and not sample.label[1].any()


def test_large_images_are_scaled_down_with_consistent_geometry(tmp_path):
    src, (h, w) = tmp_path / "src", (300, 240)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 150) ** 2 + (xx - 100) ** 2 <= 60**2
    cup = (yy - 150) ** 2 + (xx - 100) ** 2 <= 25**2
    image = np.zeros((h, w, 3), np.uint8)
    image[disc] = 200  # a bright disc the stored image must still show where the label is
    save(src / "G1020" / "Images" / "image_0.png", image)
    save(src / "G1020" / "Masks" / "image_0.png", index_mask(disc, cup))
    (case,) = get_preparer("fundus").iter_cases(src, "G1020", max_size=100)
    (sample,), meta = process_case(case)
    assert sample.image.shape == (3, 100, 80) and sample.label.shape == (2, 100, 80)
    scale2 = (100 / 300) ** 2
    assert abs(sample.label[0].sum() - disc.sum() * scale2) < 0.03 * disc.sum() * scale2
    assert abs(sample.label[1].sum() - cup.sum() * scale2) < 0.08 * cup.sum() * scale2
    assert not (sample.label[1] & ~sample.label[0]).any()  # cup inside disc
    inside, outside = sample.image[0][sample.label[0] == 1], sample.image[0][sample.label[0] == 0]
    assert inside.mean() > 150 and outside.mean() < 50  # label and image on the same grid


@pytest.mark.parametrize(
    "break_it, culprit, problem",
    [
        (lambda r: (r / "Masks" / "002.png").unlink(), "Images/002.jpg", "image without annotation"),
        (lambda r: save(r / "Masks" / "002.png", np.zeros((10, 10), np.uint8)), "Masks/002.png", "shape"),
        (lambda r: save(r / "Masks" / "002.png", np.full((40, 52), 7, np.uint8)), "Masks/002.png", r"unknown label values \[7\]"),
        (lambda r: (r / "Images" / "002.jpg").write_bytes(b"not a jpeg"), "Images/002.jpg", "unreadable"),
        (lambda r: save(r / "Masks" / "002.png", np.zeros((40, 52), np.uint8)), "Masks/002.png", "empty label"),
    ],
    ids=["no-mask", "size-mismatch", "unknown-values", "corrupt-image", "empty-label"],
)
def test_bad_input_names_the_file(tmp_path, break_it, culprit, problem):
    src, out = tmp_path / "src", tmp_path / "out"
    make_origa(src)
    break_it(src / "ORIGA")
    with pytest.raises(DataError, match=problem) as err:
        prepare_dataset("fundus", src, out, ["ORIGA"])
    assert err.value.source.endswith(culprit)
    assert not (out / "fundus" / "ORIGA").exists()
    (summary,) = prepare_dataset("fundus", src, out, ["ORIGA"], skip_bad=True)
    assert summary.num_volumes == 2 and [s["case"] for s in summary.skipped] == ["002"]


def test_refuge_unknown_mask_value_and_duplicate_stem(tmp_path):
    src = tmp_path / "src"
    make_refuge(src)
    mask_path = src / "REFUGE" / "REFUGE-Validation400-GT" / "Disc_Cup_Masks" / "V0001.bmp"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[0, 0] = 100  # neither cup, rim nor background
    save(mask_path, mask)
    save(src / "REFUGE" / "copy" / "T0001.jpg", fundus_rgb(48, 50, 9))
    cases = {c.case_id: c for c in get_preparer("fundus").iter_cases(src, "REFUGE")}
    with pytest.raises(DataError, match=r"unknown label values \[100\]") as err:
        process_case(cases["V0001"])
    assert err.value.source == str(mask_path)
    with pytest.raises(DataError, match="not unique") as err:
        process_case(cases["T0001"])
