"""Nuclei preparer on small files generated in the public releases' layouts and formats (synthetic).

PanNuke folds are float64 .npy arrays of the real patch size (256 x 256, six mask channels, tissue
names); MoNuSAC / MoNuSeg are RGB TIFFs with ImageScope XML outlines (MoNuSAC also the .svs beside
each .tif); TNBC is RGBA PNG slides with 0/255 PNG masks. Only the number and size of images are small.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from fedfms.data import DataError, get_preparer, prepare_dataset
from fedfms.data.nuclei_polygons import rasterize, read_polygons
from fedfms.data.writer import process_case

FOLD_TYPES = {2: ["Adrenal_gland", "Esophagus", "Adrenal_gland", "Bile-duct", "Uterus"],
              3: ["Uterus", "Bile-duct", "Esophagus", "Adrenal_gland", "Breast"]}
RECT = [(2, 3), (6, 3), (6, 8), (2, 8)]  # closed polygon: columns 2..6, rows 3..8 -> 30 pixels
TRIANGLE = [(9, 9), (13, 9), (9, 13)]  # pixels with x, y >= 9 and (x - 9) + (y - 9) <= 4 -> 15 pixels


def hand_mask(h: int = 16, w: int = 16) -> np.ndarray:
    """RECT and TRIANGLE filled, computed by hand from their definitions."""
    mask = np.zeros((h, w), np.uint8)
    mask[3:9, 2:7] = 1
    for y in range(9, 14):
        for x in range(9, 14):
            mask[y, x] = (x - 9) + (y - 9) <= 4
    return mask


def rgb(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def imagescope_xml(path: Path, annotations: dict[str, list[list[tuple[float, float]]]]) -> None:
    """Aperio ImageScope XML as in MoNuSeg / MoNuSAC: one Annotation per class, one Region per nucleus."""
    parts = ['<?xml version="1.0"?>\n<Annotations MicronsPerPixel="0.252000">']
    for a, (name, regions) in enumerate(annotations.items(), 1):
        parts.append(f'<Annotation Id="{a}" Name="" ReadOnly="0" Type="4" Visible="1" LineColor="65280">')
        parts.append(f'<Attributes><Attribute Name="{name}" Id="0" Value=""/></Attributes><Regions>')
        parts.append('<RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/></RegionAttributeHeaders>')
        for r, xy in enumerate(regions, 1):
            vertices = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in xy)
            parts.append(f'<Region Id="{r}" Type="0" Zoom="1" Selected="0"><Attributes/><Vertices>{vertices}</Vertices></Region>')
        parts.append("</Regions><Plots/></Annotation>")
    parts.append("</Annotations>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


def make_pannuke(root: Path) -> dict[str, np.ndarray]:
    """Folds 2 and 3: Fold N/images/foldN/{images,types}.npy, Fold N/masks/foldN/masks.npy."""
    truth = {}
    for fold, types in FOLD_TYPES.items():
        n = len(types)
        images = np.random.default_rng(fold).integers(0, 256, (n, 256, 256, 3)).astype(np.float64)
        masks = np.zeros((n, 256, 256, 6))
        for i in range(n):
            if i == 1 and fold == 2:
                continue  # a background-only patch
            masks[i, 10:20, 10:20, i % 5] = 3  # instance 3 of one nucleus type
            masks[i, 50:60, 40:45, (i + 1) % 5] = 7
            truth[f"fold{fold}_{i:05d}"] = (masks[i, ..., :5] > 0).any(-1)
        masks[..., 5] = ~(masks[..., :5] > 0).any(-1)  # channel 5: background
        truth.setdefault(f"fold{fold}_00001", np.zeros((256, 256), bool))
        base = root / "PanNuke" / f"Fold {fold}"
        (base / "images" / f"fold{fold}").mkdir(parents=True)
        (base / "masks" / f"fold{fold}").mkdir(parents=True)
        np.save(base / "images" / f"fold{fold}" / "images.npy", images)
        np.save(base / "images" / f"fold{fold}" / "types.npy", np.array(types))
        np.save(base / "masks" / f"fold{fold}" / "masks.npy", masks)
        (base / "masks" / "README.md").write_text("6 channel instance-wise masks\n")
    return truth


MONUSAC_PATIENTS = {
    "MoNuSAC_images_and_annotations": {"TCGA-5P-A9K0-01Z-00-DX1": 2, "TCGA-55-1594-01Z-00-DX1": 2,
                                       "TCGA-2Z-A9JG-01Z-00-DX1": 1},
    "MoNuSAC Testing Data and Annotations": {"TCGA-69-A59K-01Z-00-DX1": 1},
}


def make_monusac(root: Path) -> None:
    """<set>/<patient>/<patient>_<n>.{svs,tif,xml}; the test set has an Ambiguous region."""
    for s, (split, patients) in enumerate(MONUSAC_PATIENTS.items()):
        for p, (patient, count) in enumerate(patients.items()):
            for n in range(1, count + 1):
                stem = root / "MoNuSAC" / split / patient / f"{patient}_{n}"
                stem.parent.mkdir(parents=True, exist_ok=True)
                pixels = rgb(16, 16, 10 * p + n, channels=4 if n == 2 else 3)  # some tifs carry alpha
                tifffile.imwrite(stem.with_suffix(".tif"), pixels, photometric="rgb")
                tifffile.imwrite(stem.with_suffix(".svs"), pixels[..., :3], photometric="rgb")
                classes = {"Epithelial": [RECT], "Lymphocyte": [TRIANGLE, [(0, 15), (3, 15)]]}
                if s == 1:
                    classes["Ambiguous"] = [[(10, 0), (15, 0), (15, 5), (10, 5)]]
                imagescope_xml(stem.with_suffix(".xml"), classes)


def make_tnbc(root: Path) -> dict[str, list[str]]:
    """TNBC_NucleiSegmentation/Slide_XX/XX_Y.png (RGBA) and GT_XX/XX_Y.png (0/255)."""
    slides = {"01": ["01_1", "01_2"], "02": ["02_1", "02_2", "02_3"], "03": ["03_1"]}
    base = root / "TNBC" / "TNBC_NucleiSegmentation"
    for number, stems in slides.items():
        (base / f"Slide_{number}").mkdir(parents=True)
        (base / f"GT_{number}").mkdir(parents=True)
        for k, stem in enumerate(stems):
            Image.fromarray(rgb(12, 12, k, channels=4)).save(base / f"Slide_{number}" / f"{stem}.png")
            mask = np.zeros((12, 12), np.uint8)
            mask[k:k + 4, 2:6] = 255
            Image.fromarray(mask).save(base / f"GT_{number}" / f"{stem}.png")
    return slides


def make_monuseg(root: Path) -> None:
    """MoNuSeg 2018 Training Data/{Tissue Images,Annotations} and MoNuSegTestData (tif + xml together)."""
    train = root / "MoNuSeg" / "MoNuSeg 2018 Training Data"
    test = root / "MoNuSeg" / "MoNuSegTestData"
    for i, (images, annotations, stem) in enumerate([
        (train / "Tissue Images", train / "Annotations", "TCGA-18-5592-01Z-00-DX1"),
        (train / "Tissue Images", train / "Annotations", "TCGA-21-5784-01Z-00-DX1"),
        (test, test, "TCGA-2Z-A9J9-01A-01-TS1"),
    ]):
        images.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(images / f"{stem}.tif", rgb(16, 16, i), photometric="rgb")
        imagescope_xml(annotations / f"{stem}.xml", {"": [RECT, TRIANGLE]})


def make_all(root: Path) -> dict[str, np.ndarray]:
    truth = make_pannuke(root)
    make_monusac(root)
    make_tnbc(root)
    make_monuseg(root)
    return truth


def test_polygons_rasterize_to_hand_computed_pixels(tmp_path):
    imagescope_xml(tmp_path / "a.xml", {"Epithelial": [RECT], "Neutrophil": [TRIANGLE], "Ambiguous": [[(0, 0), (4, 0), (4, 2)]]})
    polygons = read_polygons(tmp_path / "a.xml", exclude=("Ambiguous",))
    mask = rasterize(polygons, 16, 16)
    assert mask.dtype == np.uint8 and int(mask.sum()) == 45
    np.testing.assert_array_equal(mask, hand_mask())
    assert rasterize(read_polygons(tmp_path / "a.xml"), 16, 16)[0, :5].all()  # Ambiguous drawn when not excluded


def test_cli_prepares_all_seven_sites(tmp_path, prepare_data_cli):
    truth = make_all(tmp_path / "src")
    out = tmp_path / "out"
    assert prepare_data_cli("nuclei", "--src", str(tmp_path / "src"), "--out", str(out)) == 0
    index = json.loads((out / "nuclei" / "dataset.json").read_text())
    counts = {s: v["num_samples"] for s, v in index["sites"].items()}
    assert counts == {"Adrenal_gland": 3, "Esophagus": 2, "Bile-duct": 2, "Uterus": 2, "MoNuSAC": 6, "TNBC": 6, "MoNuSeg": 3}
    for site in counts:
        site_dir = out / "nuclei" / site
        datalist = json.loads((site_dir / "datalist.json").read_text())
        assert datalist["metadata"]["label_channels"] == ["nuclei"]
        for entry in datalist["test"]:
            image, label = np.load(site_dir / entry["image"]), np.load(site_dir / entry["label"])
            assert image.dtype == np.uint8 and image.shape[0] == 3 and label.dtype == np.uint8
            assert label.shape == (1, *image.shape[1:]) and set(np.unique(label)) <= {0, 1}
            if site in ("MoNuSAC", "MoNuSeg"):
                np.testing.assert_array_equal(label[0], hand_mask())  # Ambiguous regions stay background
            elif site == "TNBC":
                k = int(entry["volume"].split("_")[1]) - 1
                assert label[0, k:k + 4, 2:6].all() and label.sum() == 16
            else:
                np.testing.assert_array_equal(label[0], truth[entry["volume"]])


def test_pannuke_images_and_fold_selection(tmp_path):
    truth = make_pannuke(tmp_path / "src")
    preparer = get_preparer("nuclei")
    cases = list(preparer.iter_cases(tmp_path / "src", "Adrenal_gland"))
    assert [c.case_id for c in cases] == ["fold2_00000", "fold2_00002", "fold3_00003"]
    assert cases[0].image_source.endswith("images.npy[0]") and cases[0].label_source.endswith("masks.npy[0]")
    images = np.load(tmp_path / "src" / "PanNuke" / "Fold 2" / "images" / "fold2" / "images.npy")
    (sample,), _ = process_case(cases[1])
    np.testing.assert_array_equal(sample.image, np.moveaxis(images[2], -1, 0).astype(np.uint8))
    np.testing.assert_array_equal(sample.label[0], truth["fold2_00002"])
    (empty,), _ = process_case(next(c for c in preparer.iter_cases(tmp_path / "src", "Esophagus") if c.case_id == "fold2_00001"))
    assert not empty.label.any()  # background-only patches are kept
    reference = [c.case_id for c in preparer.iter_cases(tmp_path / "src", "Uterus", pannuke_folds="reference")]
    assert reference == ["fold3_00000"]
    assert [c.case_id for c in preparer.iter_cases(tmp_path / "src", "Uterus", pannuke_folds="2")] == ["fold2_00004"]


def test_split_by_patient(tmp_path):
    make_monusac(tmp_path / "src")
    slides = make_tnbc(tmp_path / "src")
    out = tmp_path / "out"
    prepare_dataset("nuclei", tmp_path / "src", out, ["MoNuSAC", "TNBC"], seed=3)
    for site, patient_of in [("MoNuSAC", lambda v: v.rsplit("_", 1)[0]), ("TNBC", lambda v: v.split("_")[0])]:
        datalist = json.loads((out / "nuclei" / site / "datalist.json").read_text())
        train = {patient_of(e["volume"]) for e in datalist["training"]}
        val = {patient_of(e["volume"]) for e in datalist["validation"]}
        assert val and train and not train & val
        assert datalist["metadata"]["split"]["by"] == "patient"
    tnbc_val = json.loads((out / "nuclei" / "TNBC" / "datalist.json").read_text())["validation"]
    (slide,) = {e["volume"].split("_")[0] for e in tnbc_val}
    assert len(tnbc_val) == len(slides[slide])  # the whole slide goes to validation


def test_bad_inputs_name_the_file(tmp_path):
    src = tmp_path / "src"
    make_monusac(src)
    make_tnbc(src)
    base = src / "MoNuSAC" / "MoNuSAC_images_and_annotations"
    no_xml = base / "TCGA-5P-A9K0-01Z-00-DX1" / "TCGA-5P-A9K0-01Z-00-DX1_2.xml"
    no_xml.unlink()
    svs_only = base / "TCGA-55-1594-01Z-00-DX1" / "TCGA-55-1594-01Z-00-DX1_1.tif"
    svs_only.unlink()
    broken_xml = base / "TCGA-55-1594-01Z-00-DX1" / "TCGA-55-1594-01Z-00-DX1_2.xml"
    broken_xml.write_text("<Annotations><Annotation>")
    with pytest.raises(DataError):
        prepare_dataset("nuclei", src, tmp_path / "out", ["MoNuSAC"])
    assert not (tmp_path / "out" / "nuclei" / "MoNuSAC").exists()
    (summary,) = prepare_dataset("nuclei", src, tmp_path / "out", ["MoNuSAC"], skip_bad=True)
    problems = {b["case"]: (b["source"], b["problem"]) for b in summary.skipped}
    assert problems["TCGA-5P-A9K0-01Z-00-DX1_2"][0].endswith("TCGA-5P-A9K0-01Z-00-DX1_2.tif")
    assert "image without annotation" in problems["TCGA-5P-A9K0-01Z-00-DX1_2"][1]
    assert problems["TCGA-55-1594-01Z-00-DX1_1"][0].endswith("_1.svs") and ".tif" in problems["TCGA-55-1594-01Z-00-DX1_1"][1]
    assert problems["TCGA-55-1594-01Z-00-DX1_2"][0].endswith("_2.xml") and "unreadable" in problems["TCGA-55-1594-01Z-00-DX1_2"][1]
    assert summary.num_volumes == 3

    mask_path = src / "TNBC" / "TNBC_NucleiSegmentation" / "GT_02" / "02_2.png"
    Image.fromarray(np.full((12, 12), 128, np.uint8)).save(mask_path)
    with pytest.raises(DataError, match=r"unknown label values \[128\]") as err:
        prepare_dataset("nuclei", src, tmp_path / "out", ["TNBC"])
    assert err.value.source == str(mask_path)


def test_pannuke_bad_arrays_name_the_file(tmp_path):
    make_pannuke(tmp_path / "src")
    fold = tmp_path / "src" / "PanNuke" / "Fold 3"
    images_path = fold / "images" / "fold3" / "images.npy"
    images = np.load(images_path)
    images[3, 0, 0, 0] = np.nan
    np.save(images_path, images)
    with pytest.raises(DataError, match="NaN") as err:
        prepare_dataset("nuclei", tmp_path / "src", tmp_path / "out", ["Adrenal_gland"])
    assert err.value.source == f"{images_path}[3]"
    masks_path = fold / "masks" / "fold3" / "masks.npy"
    np.save(masks_path, np.zeros((5, 256, 256, 5)))
    with pytest.raises(DataError, match=r"expected \(5, 256, 256, 6\)") as err:
        list(get_preparer("nuclei").iter_cases(tmp_path / "src", "Uterus"))
    assert err.value.source == str(masks_path)
