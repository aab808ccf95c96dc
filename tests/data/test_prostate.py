"""Prostate release layouts and the prepared output contract."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from fedfms.data import DataError, prepare_dataset


def test_all_six_sites_output_contract(prostate_release, tmp_path, read_datalist):
    src = prostate_release()
    out = tmp_path / "out"
    summaries = prepare_dataset("prostate", src, out)
    assert [s.site for s in summaries] == ["BIDMC", "HK", "I2CVB", "ISBI", "ISBI1.5", "UCL"]
    index = json.loads((out / "prostate" / "dataset.json").read_text())
    assert sorted(index["sites"]) == ["BIDMC", "HK", "I2CVB", "ISBI", "ISBI1.5", "UCL"]

    d = read_datalist(out, "prostate", "ISBI")
    meta = d["metadata"]
    assert meta["site"] == "ISBI" and meta["dataset"] == "prostate" and meta["synthetic"] is False
    assert meta["label_channels"] == ["prostate"] and meta["num_volumes"] == 4
    assert meta["num_slices"] == 5 + 6 + 7 + 8 == len(d["test"])  # every slice kept
    vol = meta["volumes"]["Case02"]
    assert vol["source"] == "ISBI/Case02.nii.gz" and vol["shape"] == [24, 20, 7] and vol["slice_axis"] == 2
    np.testing.assert_allclose(vol["affine"], np.diag([0.6, 0.6, 3.0, 1.0]))
    assert sorted(e["slice"] for e in d["test"] if e["volume"] == "Case02") == list(range(7))

    entry = next(e for e in d["test"] if e["volume"] == "Case02" and e["slice"] == 2)
    assert set(entry) == {"image", "label", "volume", "slice"}
    image = np.load(out / "prostate" / "ISBI" / entry["image"])
    label = np.load(out / "prostate" / "ISBI" / entry["label"])
    assert image.shape == (1, 24, 20) and image.dtype == np.float16
    assert label.shape == (1, 24, 20) and label.dtype == np.uint8
    # ISBI labels use values 1 and 2 (two zones); both are prostate
    raw = np.asanyarray(nib.load(src / "ISBI" / "Case02_segmentation.nii.gz").dataobj)[..., 2]
    assert set(np.unique(raw)) == {0, 2}
    np.testing.assert_array_equal(label[0], raw > 0)
    # slice normalized with the statistics of the whole volume
    volume = np.asanyarray(nib.load(src / "ISBI" / "Case02.nii.gz").dataobj).astype(np.float64)
    lo, hi = volume.min(), np.percentile(volume, 99)
    np.testing.assert_allclose(image[0], np.clip((volume[..., 2] - lo) / (hi - lo), 0, 1), atol=1e-3)


@pytest.mark.parametrize("folder,suffix", [("ISBI_1.5", "Segmentation"), ("ISBI1.5", "Segmentation"),
                                           ("ISBI1.5", "segmentation"), ("BMC", "Segmentation")])
def test_isbi15_folder_and_segmentation_spellings(prostate_release, tmp_path, folder, suffix, read_datalist):
    src = prostate_release({folder: 2}, seg_suffix={folder: suffix})
    prepare_dataset("prostate", src, tmp_path / "out", ["ISBI1.5"])
    d = read_datalist(tmp_path / "out", "prostate", "ISBI1.5")
    assert d["metadata"]["site"] == "ISBI1.5" and d["metadata"]["num_volumes"] == 2
    assert d["metadata"]["volumes"]["Case01"]["source"] == f"{folder}/Case01.nii.gz"


def test_uppercase_segmentation_on_any_site(prostate_release, tmp_path):
    src = prostate_release({"UCL": 2}, seg_suffix={"UCL": "Segmentation"})
    assert prepare_dataset("prostate", src, tmp_path / "out", ["UCL"])[0].num_volumes == 2


def test_site_folder_problems(prostate_release, tmp_path):
    src = prostate_release({"HK": 1})
    with pytest.raises(DataError, match="expected one folder for site UCL named UCL, found no folder") as err:
        prepare_dataset("prostate", src, tmp_path / "out", ["UCL"])
    assert err.value.source == str(src) and err.value.site == "UCL" and err.value.case is None
    src2 = prostate_release({"ISBI_1.5": 1, "ISBI1.5": 1}, root_name="two")
    with pytest.raises(DataError, match=r"named ISBI1.5 or ISBI_1.5 or BMC, found 2 folders \(ISBI1.5, ISBI_1.5\)"):
        prepare_dataset("prostate", src2, tmp_path / "out", ["ISBI1.5"])
    (src / "UCL").mkdir()
    (src / "UCL" / "notes.txt").write_text("no CaseNN files here")
    with pytest.raises(DataError, match="no cases found for prostate site 'UCL'.*prepare_data.py prostate --help"):
        prepare_dataset("prostate", src, tmp_path / "out", ["UCL"])
    with pytest.raises(DataError, match="release folder not found"):
        prepare_dataset("prostate", tmp_path / "missing", tmp_path / "out")


def test_both_segmentation_spellings_for_one_case_is_ambiguous(prostate_release, tmp_path):
    src = prostate_release({"HK": 2})
    seg = src / "HK" / "Case00_segmentation.nii.gz"
    (src / "HK" / "Case00_Segmentation.nii.gz").write_bytes(seg.read_bytes())
    with pytest.raises(DataError, match="ambiguous files"):
        prepare_dataset("prostate", src, tmp_path / "out", ["HK"])
