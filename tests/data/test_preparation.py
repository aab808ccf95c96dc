"""The shared site writer: split by volume, bad-input messages, --skip-bad, atomic writes, idempotency."""

from __future__ import annotations

import gzip
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

import fedfms.data.writer as writer
from fedfms.data import DataError, SiteError, available_datasets, get_preparer, prepare_dataset, split_groups


def test_registry_lists_builtin_preparers():
    assert {"prostate", "brain", "fundus", "nuclei"} <= set(available_datasets())
    assert get_preparer("prostate").sites == ("BIDMC", "HK", "I2CVB", "ISBI", "ISBI1.5", "UCL")
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        get_preparer("nope")


def test_split_groups_deterministic_and_sized():
    groups = [f"Case{i:02d}" for i in range(30)]
    val = split_groups(groups, seed=1337)
    assert len(val) == 3 and val <= set(groups)
    assert split_groups(reversed(groups), seed=1337) == val  # order of discovery does not matter
    assert split_groups(groups, seed=1) != val
    assert len(split_groups(groups[:2], seed=0)) == 1 and split_groups(groups[:1], seed=0) == set()


def test_split_is_by_volume(prostate_release, tmp_path, read_datalist):
    src = prostate_release({"ISBI": 12})
    out = tmp_path / "out"
    prepare_dataset("prostate", src, out, ["ISBI"], seed=7)
    d = read_datalist(out, "prostate", "ISBI")
    train_vols = {e["volume"] for e in d["training"]}
    val_vols = {e["volume"] for e in d["validation"]}
    assert train_vols and val_vols and not train_vols & val_vols
    assert len(val_vols) == 1 and len(train_vols) == 11
    # every slice of a validation volume is in validation; test is everything
    assert len(d["training"]) + len(d["validation"]) == len(d["test"]) == d["metadata"]["num_slices"]
    assert d["metadata"]["split"]["validation_groups"] == sorted(val_vols)
    prepare_dataset("prostate", src, tmp_path / "out2", ["ISBI"], seed=7)
    assert read_datalist(tmp_path / "out2", "prostate", "ISBI")["validation"] == d["validation"]


def _corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _nan(path: Path, save) -> None:
    image = np.ones((24, 20, 6), np.float32)
    image[3, 3, 3] = np.nan
    save(path, image)


BAD_CASES = {
    # name: (damage(site_dir, save_nifti) applied to BIDMC/Case01, file the message must name, problem pattern)
    "corrupted": (lambda d, save: _corrupt(d / "Case01.nii.gz"), "Case01.nii.gz", "unreadable or corrupted"),
    "not_nifti": (lambda d, save: (d / "Case01_segmentation.nii.gz").write_bytes(gzip.compress(b"not a nifti file")),
                  "Case01_segmentation.nii.gz", "unreadable or corrupted"),
    "no_label": (lambda d, save: (d / "Case01_segmentation.nii.gz").unlink(), "Case01.nii.gz", "image without label"),
    "no_image": (lambda d, save: (d / "Case01.nii.gz").unlink(), "Case01_segmentation.nii.gz", "label without image"),
    "shape": (lambda d, save: save(d / "Case01_segmentation.nii.gz", np.zeros((24, 20, 4), np.uint8)),
              "Case01_segmentation.nii.gz", r"label shape \(24, 20, 4\) does not match image shape \(24, 20, 6\)"),
    "empty": (lambda d, save: save(d / "Case01_segmentation.nii.gz", np.zeros((24, 20, 6), np.uint8)),
              "Case01_segmentation.nii.gz", "empty label"),
    "values": (lambda d, save: save(d / "Case01_segmentation.nii.gz", np.full((24, 20, 6), 7, np.uint8)),
               "Case01_segmentation.nii.gz", r"unknown label values \[7\]"),
    "nan": (lambda d, save: _nan(d / "Case01.nii.gz", save), "Case01.nii.gz", "NaN or infinite"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_case_names_file_and_writes_nothing(prostate_release, save_nifti, tmp_path, kind):
    damage, culprit, problem = BAD_CASES[kind]
    src = prostate_release({"BIDMC": 3})
    damage(src / "BIDMC", save_nifti)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=problem) as err:
        prepare_dataset("prostate", src, out, ["BIDMC"])
    assert err.value.source.endswith(str(Path("BIDMC") / culprit))
    assert str(err.value).startswith(str(src / "BIDMC" / culprit))
    assert not (out / "prostate" / "BIDMC").exists()
    assert [p.name for p in (out / "prostate").iterdir()] == ["dataset.json"]  # no temp folder left


def test_skip_bad_lists_skipped_cases(prostate_release, save_nifti, tmp_path, read_datalist):
    src = prostate_release({"BIDMC": 4})
    BAD_CASES["no_image"][0](src / "BIDMC", save_nifti)  # Case01: label without image
    save_nifti(src / "BIDMC" / "Case02_segmentation.nii.gz", np.zeros((24, 20, 7), np.uint8))
    summaries = prepare_dataset("prostate", src, tmp_path / "out", ["BIDMC"], skip_bad=True)
    skipped = read_datalist(tmp_path / "out", "prostate", "BIDMC")["metadata"]["skipped"]
    assert [(s["case"], s["source"]) for s in skipped] == [
        ("Case01", "BIDMC/Case01_segmentation.nii.gz"), ("Case02", "BIDMC/Case02_segmentation.nii.gz")]
    assert "empty label" in skipped[1]["problem"]
    assert summaries[0].num_volumes == 2 and len(summaries[0].skipped) == 2
    assert "skipped BIDMC/Case02" in writer.format_summary("prostate", summaries)
    assert {e["volume"] for e in read_datalist(tmp_path / "out", "prostate", "BIDMC")["test"]} == {"Case00", "Case03"}


def test_all_cases_bad_is_an_error_even_with_skip(prostate_release, save_nifti, tmp_path):
    src = prostate_release({"HK": 1})
    BAD_CASES["empty"][0](src / "HK", save_nifti)  # Case01 does not exist: creates a label without image
    _corrupt(src / "HK" / "Case00.nii.gz")
    with pytest.raises(DataError, match="no valid cases left"):
        prepare_dataset("prostate", src, tmp_path / "out", ["HK"], skip_bad=True)


def test_failed_run_leaves_earlier_output_byte_identical(prostate_release, save_nifti, tmp_path, digest):
    src = prostate_release({"BIDMC": 3, "HK": 2})
    out = tmp_path / "out"
    prepare_dataset("prostate", src, out, ["BIDMC", "HK"])
    before = digest(out)
    BAD_CASES["values"][0](src / "BIDMC", save_nifti)
    (src / "HK" / "Case02.nii.gz").write_bytes((src / "HK" / "Case00.nii.gz").read_bytes())  # new HK case
    with pytest.raises(DataError):
        prepare_dataset("prostate", src, out, ["BIDMC", "HK"])
    assert digest(out) == before


def assert_index_matches_sites(dataset_dir: Path) -> None:
    """dataset.json lists exactly the site folders present, with their datalists' counts."""
    index = json.loads((dataset_dir / "dataset.json").read_text())["sites"]
    sites = sorted(p.name for p in dataset_dir.iterdir() if p.is_dir())
    assert sorted(index) == sites and not any(name.startswith(".") for name in sites)  # no temp folder left
    for site in sites:
        d = json.loads((dataset_dir / site / "datalist.json").read_text())
        assert (index[site]["num_training"], index[site]["num_validation"]) == (len(d["training"]), len(d["validation"]))


def test_failure_in_second_site_keeps_first_and_earlier_output(prostate_release, save_nifti, tmp_path, digest):
    src = prostate_release({"BIDMC": 3, "HK": 3})
    out = tmp_path / "out"
    prepare_dataset("prostate", src, out, ["BIDMC", "HK"])
    hk_before = digest(out / "prostate" / "HK")
    BAD_CASES["values"][0](src / "HK", save_nifti)  # HK/Case01 gets an unknown label value
    with pytest.raises(DataError, match="unknown label values") as err:
        prepare_dataset("prostate", src, out, ["BIDMC", "HK"], seed=5)
    assert (err.value.site, err.value.case) == ("HK", "Case01")
    assert digest(out / "prostate" / "HK") == hk_before  # the failed site's earlier output is untouched
    prepare_dataset("prostate", src, tmp_path / "fresh", ["BIDMC"], seed=5)
    assert digest(out / "prostate" / "BIDMC") == digest(tmp_path / "fresh" / "prostate" / "BIDMC")  # done: new
    assert_index_matches_sites(out / "prostate")


def test_sigterm_mid_site_cleans_up(prostate_release, tmp_path, digest, monkeypatch):
    src = prostate_release({"BIDMC": 3, "HK": 3})
    out = tmp_path / "out"
    prepare_dataset("prostate", src, out, ["BIDMC", "HK"])
    hk_before = digest(out / "prostate" / "HK")
    real_save, calls = np.save, {"n": 0}
    bidmc_saves = 2 * (5 + 6 + 7)  # image + label per slice

    def save_then_kill(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == bidmc_saves + 5:  # inside HK, the second site
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(writer.np, "save", save_then_kill)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_, writer.terminate_as_exit():
        prepare_dataset("prostate", src, out, ["BIDMC", "HK"], seed=5)
    assert exit_.value.code == 128 + signal.SIGTERM and calls["n"] < 2 * bidmc_saves
    assert signal.getsignal(signal.SIGTERM) is previous  # handler restored
    assert digest(out / "prostate" / "HK") == hk_before
    assert_index_matches_sites(out / "prostate")  # BIDMC (finished, seed 5) is indexed with its new counts


def test_interrupted_write_leaves_no_partial_site(prostate_release, tmp_path, digest, monkeypatch):
    src = prostate_release({"UCL": 3})
    out = tmp_path / "out"
    prepare_dataset("prostate", src, out, ["UCL"])
    before = digest(out)
    calls = {"n": 0}
    real_save = np.save

    def save_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(writer.np, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("prostate", src, out, ["UCL"], seed=99)
    assert digest(out) == before
    assert sorted(p.name for p in (out / "prostate").iterdir()) == ["UCL", "dataset.json"]


@pytest.mark.parametrize("dataset", ["brain", "fundus", "nuclei", "prostate"])
def test_unknown_site_is_an_error_before_writing(fets_release, tmp_path, dataset):
    src = fets_release()  # any folder does for the datasets with fixed site names
    preparer = get_preparer(dataset)
    with pytest.raises(SiteError, match=rf"unknown {dataset} site\(s\) \['XYZ'\]; available: ") as err:
        prepare_dataset(dataset, src, tmp_path / "out", [preparer.sites[0], "XYZ"])
    assert all(site in str(err.value) for site in preparer.sites)
    assert not (tmp_path / "out").exists()
    assert preparer.resolve_sites(None, src) == list(preparer.sites)


@pytest.mark.parametrize("dataset, requested, resolved", [
    ("prostate", ["isbi_1.5", "BMC", "bidmc", "RUNMC"], ["ISBI1.5", "BIDMC", "ISBI"]),
    ("brain", ["6", "partition_6", "PARTITION_18", "3"], ["partition_6", "partition_18", "partition_3"]),
    ("fundus", ["refuge", "Drishti-GS", "origa-light"], ["REFUGE", "Drishti-GS1", "ORIGA"]),
    ("nuclei", ["tnbc", "adrenal_gland", "MoNuSeg"], ["TNBC", "Adrenal_gland", "MoNuSeg"]),
])
def test_site_names_and_aliases_resolve(fets_release, dataset, requested, resolved):
    assert get_preparer(dataset).resolve_sites(requested, fets_release()) == resolved


def test_rerun_is_idempotent(prostate_release, tmp_path, digest):
    src = prostate_release({"BIDMC": 3, "ISBI_1.5": 2})
    out = tmp_path / "out"
    prepare_dataset("prostate", src, out, ["BIDMC", "ISBI1.5"])
    first = digest(out)
    prepare_dataset("prostate", src, out, ["BIDMC", "ISBI1.5"])
    assert digest(out) == first
    # the output does not depend on where the release copy lives
    moved = src.rename(tmp_path / "elsewhere")
    prepare_dataset("prostate", moved, tmp_path / "out2", ["BIDMC", "ISBI1.5"])
    assert digest(tmp_path / "out2") == first


def test_dataset_index_keeps_other_sites(prostate_release, tmp_path, read_datalist):
    src = prostate_release({"BIDMC": 2, "UCL": 2})
    out = tmp_path / "out"
    prepare_dataset("prostate", src, out, ["BIDMC"])
    prepare_dataset("prostate", src, out, ["UCL"])
    index = json.loads((out / "prostate" / "dataset.json").read_text())
    assert sorted(index["sites"]) == ["BIDMC", "UCL"]
    assert index["sites"]["UCL"]["num_samples"] == len(read_datalist(out, "prostate", "UCL")["test"]) == 5 + 6
