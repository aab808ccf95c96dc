"""Clinical formats in preparation: MetaImage, NRRD, DICOM series (read by MONAI's ITKReader), their
geometry, the PROMISE12 layout of the prostate sites, and headers that declare implausible sizes.
Every file is built here with ITK or pydicom; nothing is downloaded."""

from __future__ import annotations

import gzip
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from fedfms.data import DataError, prepare_dataset
from fedfms.data import volume_io
from fedfms.data.volume_io import read_volume

SPACING, ORIGIN = (0.7, 0.8, 2.5), (10.0, -20.0, 30.0)
ANGLE = 0.3
ROTATION = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0], [np.sin(ANGLE), np.cos(ANGLE), 0], [0, 0, 1]])


def _expected_ras_affine(spacing, origin, direction) -> np.ndarray:
    """ITK's (LPS) geometry as a RAS voxel-to-world affine, computed here from its definition."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction) @ np.diag(spacing)
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _volume(seed: int = 0, shape=(24, 20, 6)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = (rng.random(shape) * 700 + 50).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[6:14, 5:12, 1:-1] = 1
    return image, label


@pytest.mark.parametrize("suffix", [".mha", ".mhd", ".nrrd", ".nii.gz", "dicom"])
def test_each_format_reads_array_and_geometry(suffix, tmp_path, write_itk_volume, write_dicom_series):
    image, _ = _volume()
    if suffix == "dicom":
        path = write_dicom_series(tmp_path / "series", image, SPACING, ORIGIN, ROTATION)
    else:
        path = write_itk_volume(tmp_path / f"Case00{suffix}", image, SPACING, ORIGIN, ROTATION)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, image)
    np.testing.assert_allclose(volume.affine, _expected_ras_affine(SPACING, ORIGIN, ROTATION), atol=1e-5)
    np.testing.assert_allclose(volume.spacing, SPACING, rtol=1e-6)
    if suffix == "dicom":  # slice files in position order, not name order
        assert [p.rsplit("/", 1)[-1] for p in volume.files] == [f"IM{6 - k:04d}.dcm" for k in range(6)]


def _promise12_site(root, write_itk_volume, write_dicom_series):
    """An ISBI site in the PROMISE12 style: Case00.mhd/.raw + Case00_segmentation.mhd, a compressed .mha
    case, and a DICOM series folder with an NRRD segmentation."""
    cases = {}
    for i in range(3):
        image, label = _volume(seed=i, shape=(24, 20, 5 + i))
        cases[f"Case{i:02d}"] = (image, label)
    site = root / "ISBI"
    write_itk_volume(site / "Case00.mhd", cases["Case00"][0], SPACING, ORIGIN, ROTATION)
    write_itk_volume(site / "Case00_segmentation.mhd", cases["Case00"][1], SPACING, ORIGIN, ROTATION)
    write_itk_volume(site / "Case01.mha", cases["Case01"][0], SPACING, ORIGIN, compression=True)
    write_itk_volume(site / "Case01_Segmentation.mha", cases["Case01"][1], SPACING, ORIGIN, compression=True)
    write_dicom_series(site / "Case02", cases["Case02"][0], SPACING, ORIGIN, ROTATION)
    write_itk_volume(site / "Case02_segmentation.nrrd", cases["Case02"][1], SPACING, ORIGIN, ROTATION)
    return cases


def test_promise12_layout_prepares_like_nifti(tmp_path, write_itk_volume, write_dicom_series, read_datalist):
    cases = _promise12_site(tmp_path / "itk", write_itk_volume, write_dicom_series)
    for case_id, (image, label) in cases.items():  # the same volumes as NIfTI, the release's own format
        affine = _expected_ras_affine(SPACING, ORIGIN, ROTATION if case_id != "Case01" else np.eye(3))
        (tmp_path / "nifti" / "ISBI").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(image, affine), tmp_path / "nifti" / "ISBI" / f"{case_id}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), tmp_path / "nifti" / "ISBI" / f"{case_id}_segmentation.nii.gz")
    prepare_dataset("prostate", tmp_path / "itk", tmp_path / "out_itk", ["ISBI"])
    prepare_dataset("prostate", tmp_path / "nifti", tmp_path / "out_nifti", ["ISBI"])

    d_itk, d_nifti = read_datalist(tmp_path / "out_itk", "prostate", "ISBI"), read_datalist(tmp_path / "out_nifti", "prostate", "ISBI")
    volumes = d_itk["metadata"]["volumes"]
    assert {v: volumes[v]["source"] for v in volumes} == {
        "Case00": "ISBI/Case00.mhd", "Case01": "ISBI/Case01.mha", "Case02": "ISBI/Case02"}
    assert d_itk["metadata"]["num_slices"] == 5 + 6 + 7 == len(d_itk["test"])
    for case_id, info in volumes.items():
        assert info["shape"] == list(cases[case_id][0].shape) and info["slice_axis"] == 2
        np.testing.assert_allclose(info["affine"], d_nifti["metadata"]["volumes"][case_id]["affine"], atol=1e-5)
    assert d_itk["training"] == d_nifti["training"] and d_itk["validation"] == d_nifti["validation"]
    for entry in d_itk["test"]:  # every prepared sample is byte-identical to the NIfTI route's
        for key in ("image", "label"):
            itk_bytes = (tmp_path / "out_itk" / "prostate" / "ISBI" / entry[key]).read_bytes()
            assert itk_bytes == (tmp_path / "out_nifti" / "prostate" / "ISBI" / entry[key]).read_bytes(), entry[key]
    # and the sample holds the volume scaled by its own minimum and 99th percentile
    image = cases["Case02"][0].astype(np.float64)
    sample = np.load(tmp_path / "out_itk" / "prostate" / "ISBI" / "images" / "Case02_s003.npy")
    lo, hi = image.min(), np.percentile(image, 99)
    np.testing.assert_allclose(sample[0], np.clip((image[..., 3] - lo) / (hi - lo), 0, 1), atol=1e-3)


@pytest.mark.parametrize("change, problem", [
    ({"spacing": (0.7, 0.8, 3.0)}, "spacing"),
    ({"origin": (10.0, -20.0, 32.5)}, "origin"),
    ({"direction": ROTATION}, "direction"),
])
def test_geometry_mismatch_names_both_files(change, problem, tmp_path, write_itk_volume):
    image, label = _volume()
    site = tmp_path / "src" / "UCL"
    write_itk_volume(site / "Case00.mha", image, SPACING, ORIGIN)
    geometry = {"spacing": SPACING, "origin": ORIGIN, **change}
    write_itk_volume(site / "Case00_segmentation.nrrd", label, **geometry)
    with pytest.raises(DataError, match=problem) as err:
        prepare_dataset("prostate", tmp_path / "src", tmp_path / "out", ["UCL"])
    message = str(err.value)
    assert str(site / "Case00_segmentation.nrrd") in message and str(site / "Case00.mha") in message
    assert not (tmp_path / "out" / "prostate" / "UCL").exists()


def _nifti_bomb(path, shape=(800, 800, 800)):
    """A valid tiny NIfTI whose header then claims ``shape`` float32 (gzip-compressed if .gz)."""
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), path.with_suffix(".tmp.nii"))
    raw = bytearray(path.with_suffix(".tmp.nii").read_bytes())
    header = nib.Nifti1Header.from_fileobj(open(path.with_suffix(".tmp.nii"), "rb"))
    header.set_data_shape(shape)
    raw[: len(header.binaryblock)] = header.binaryblock
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


@pytest.mark.parametrize("name", ["Case00.nii.gz", "Case00.nii"])
def test_nifti_header_claiming_800_cubed_is_refused_before_allocating(name, tmp_path, save_nifti):
    site = tmp_path / "src" / "UCL"
    site.mkdir(parents=True)
    bomb = _nifti_bomb(site / name)
    save_nifti(site / "Case00_segmentation.nii.gz", np.ones((2, 2, 2), np.uint8), (1.0, 1.0, 1.0))
    assert bomb.stat().st_size < 1024
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"header declares shape \(800, 800, 800\) x 4 bytes = 2,048,000,000 bytes") as err:
            prepare_dataset("prostate", tmp_path / "src", tmp_path / "out", ["UCL"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(bomb) in str(err.value)
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB allocated before refusing"


def test_itk_headers_larger_than_their_data_are_refused(tmp_path, write_itk_volume):
    image, _ = _volume()
    truncated = write_itk_volume(tmp_path / "cut.mha", image)
    truncated.write_bytes(truncated.read_bytes()[:-500])
    with pytest.raises(DataError, match=r"cut.mha: header declares .* more than the .* bytes on disk can hold \(uncompressed\)"):
        read_volume(truncated)
    detached = write_itk_volume(tmp_path / "short.mhd", image)
    raw = tmp_path / "short.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(DataError, match=r"short.mhd: header declares .* more than the 100 bytes on disk"):
        read_volume(detached)
    raw.unlink()
    with pytest.raises(DataError, match="short.mhd: its data file short.raw was not found"):
        read_volume(detached)


def test_voxel_limit_is_checked_and_named(tmp_path, write_itk_volume, monkeypatch):
    image, _ = _volume()
    path = write_itk_volume(tmp_path / "big.nrrd", image, compression=True)
    monkeypatch.setattr(volume_io, "MAX_VOXELS", image.size - 1)
    with pytest.raises(DataError, match=r"big.nrrd: header declares shape \(24, 20, 6\) = 2,880 voxels, above the limit of 2,879 \(FEDFMS_MAX_VOXELS\)"):
        read_volume(path)
    monkeypatch.setattr(volume_io, "MAX_VOXELS", image.size)
    np.testing.assert_array_equal(read_volume(path).array, image)


def test_corrupted_itk_file_names_the_file(tmp_path):
    bad = tmp_path / "Case00.mha"
    bad.write_bytes(b"this is not a MetaImage header\n" * 3)
    with pytest.raises(DataError, match="Case00.mha: unreadable or corrupted file"):
        read_volume(bad)


def test_folder_named_like_a_case_file_is_reported_as_a_folder(prostate_release, tmp_path, read_datalist):
    src = prostate_release({"HK": 2})
    (src / "HK" / "Case00.nii.gz").unlink()
    (src / "HK" / "Case00.nii.gz").mkdir()
    with pytest.raises(DataError, match=r"HK/Case00.nii.gz: is a folder, expected a volume file"):
        prepare_dataset("prostate", src, tmp_path / "out", ["HK"])
    prepare_dataset("prostate", src, tmp_path / "out", ["HK"], skip_bad=True)
    skipped = read_datalist(tmp_path / "out", "prostate", "HK")["metadata"]["skipped"]
    assert skipped == [{"case": "Case00", "source": "HK/Case00.nii.gz", "problem": "is a folder, expected a volume file of this name"}]


def test_release_path_that_is_a_file(tmp_path):
    (tmp_path / "release.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="release.zip: is a file, expected the release folder"):
        prepare_dataset("prostate", tmp_path / "release.zip", tmp_path / "out")
