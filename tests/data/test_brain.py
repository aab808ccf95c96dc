"""FeTS 2022 layout: partitions as sites, ET / TC targets, reference slice selection, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from fedfms.data import DataError, SiteError, prepare_dataset


def test_default_partitions_and_et_target(fets_release, tmp_path, read_datalist):
    src = fets_release()
    summaries = prepare_dataset("brain", src, tmp_path / "out")
    assert [s.site for s in summaries] == ["partition_1", "partition_6", "partition_18", "partition_21"]
    assert [s.num_volumes for s in summaries] == [3, 2, 2, 2]
    d = read_datalist(tmp_path / "out", "brain", "partition_1")
    assert d["metadata"]["label_channels"] == ["ET"]
    assert d["metadata"]["volumes"]["FeTS2022_00000"]["source"] == "FeTS2022_00000/FeTS2022_00000_t1ce.nii.gz"
    assert len(d["test"]) == 3 * 12  # all axial slices
    by_slice = {e["slice"]: np.load(tmp_path / "out" / "brain" / "partition_1" / e["label"])
                for e in d["test"] if e["volume"] == "FeTS2022_00000"}
    assert [k for k, v in sorted(by_slice.items()) if v.any()] == [5, 6]  # label 4 only
    assert int(by_slice[5].sum()) == 9


def test_tc_target_reference_slices_and_site_aliases(fets_release, tmp_path, read_datalist):
    src = fets_release()
    options = {"target": "tc", "slices": "reference"}
    prepare_dataset("brain", src, tmp_path / "out", ["3", "partition_6"], options=options)
    d = read_datalist(tmp_path / "out", "brain", "partition_3")
    assert d["metadata"]["label_channels"] == ["TC"] and d["metadata"]["options"]["target"] == "tc"
    # TC = labels {1, 4} on slices 4-7; reference keeps those plus every 5th slice without: 0, 5, 10
    assert sorted(e["slice"] for e in d["test"]) == [0, 4, 5, 6, 7, 10]
    assert (tmp_path / "out" / "brain" / "partition_6" / "datalist.json").is_file()


def test_missing_files_and_bad_partitioning(fets_release, tmp_path):
    src = fets_release({"1": 2})
    (src / "FeTS2022_00001" / "FeTS2022_00001_seg.nii.gz").unlink()
    with pytest.raises(DataError, match="image without label") as err:
        prepare_dataset("brain", src, tmp_path / "out", ["1"])
    assert "FeTS2022_00001_t1ce.nii.gz" in str(err.value)
    with pytest.raises(SiteError, match=r"unknown brain site\(s\) \['99'\]; available: partition_1$"):
        prepare_dataset("brain", src, tmp_path / "out", ["99"])
    with pytest.raises(SiteError, match=r"\['partition_6', 'partition_18', 'partition_21'\]"):
        prepare_dataset("brain", src, tmp_path / "out")  # the default partitions must be in the CSV
    (src / "partitioning_1.csv").write_text("Subject,Site\nx,1\n")
    with pytest.raises(DataError, match="Partition_ID,Subject_ID"):
        prepare_dataset("brain", src, tmp_path / "out", ["1"])
    (src / "partitioning_1.csv").unlink()
    with pytest.raises(DataError, match="partitioning CSV not found"):
        prepare_dataset("brain", src, tmp_path / "out", ["1"])


def test_unknown_seg_value_names_the_file(fets_release, save_nifti, tmp_path):
    src = fets_release({"1": 2})
    seg = np.zeros((16, 16, 12), np.uint8)
    seg[2, 2, 2] = 3  # BraTS 2021 has no label 3
    save_nifti(src / "FeTS2022_00000" / "FeTS2022_00000_seg.nii.gz", seg, (1.0, 1.0, 1.0))
    with pytest.raises(DataError, match=r"FeTS2022_00000_seg.nii.gz: unknown label values \[3\]"):
        prepare_dataset("brain", src, tmp_path / "out", ["1"])
