"""Inference on new patients: each bundle's configs/inference.json run on its own (the docs' command) on
raw MHA volumes, DICOM series and 2D images built here, with tiny random models (vit_tiny, 64 px; the
weights are SYNTHETIC, so the masks only show that geometry and plumbing are right)."""

from __future__ import annotations

import json
from pathlib import Path

import itk
import numpy as np
import pytest
import torch
from PIL import Image

from fedfms.bundle.config import TrainConfig
from fedfms.bundle.raw_inputs import find_inputs
from fedfms.data import DataError, prepare_dataset
from fedfms.data.volume_io import read_volume
from fedfms.networks import MSASegmenter, SAMSegmenter

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
ANGLE = 0.4
ROTATION = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0], [np.sin(ANGLE), np.cos(ANGLE), 0], [0, 0, 1]])
SMALL = ["--image_size", "64"]


def _scan(seed: int, shape=(40, 32, 6)) -> np.ndarray:
    """A synthetic MR-like volume (X, Y, Z): a bright off-centre ellipse on noise, so masks are not symmetric."""
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[: shape[0], : shape[1]]
    blob = ((x - 14) / 9.0) ** 2 + ((y - 20) / 6.0) ** 2 < 1
    return (rng.random(shape) * 200 + 600 * blob[..., None]).astype(np.int16)


def _itk_geometry(path) -> tuple:
    image = itk.imread(str(path))
    return (tuple(itk.size(image)), np.asarray(image.GetSpacing()), np.asarray(image.GetOrigin()),
            itk.array_from_matrix(image.GetDirection()))


def _assert_same_geometry(mask_path, input_path) -> None:
    (size, spacing, origin, direction), (size_in, spacing_in, origin_in, direction_in) = _itk_geometry(mask_path), _itk_geometry(input_path)
    assert size == size_in
    np.testing.assert_allclose(spacing, spacing_in, rtol=1e-5)
    np.testing.assert_allclose(origin, origin_in, atol=1e-4)
    np.testing.assert_allclose(direction, direction_in, atol=1e-5)


def _expected_slice_mask(network, volume: np.ndarray, k: int, image_size: int = 64) -> np.ndarray:
    """The mask of slice k computed here from the documented contract with plain numpy / torch."""
    v = volume.astype(np.float64)
    lo, hi = v.min(), np.percentile(v, 99)
    scaled = np.clip((v[..., k] - lo) / (hi - lo), 0, 1).astype(np.float16).astype(np.float32)
    x = torch.from_numpy(scaled)[None, None].repeat(1, 3, 1, 1)
    x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = network.eval()(x)
    logits = torch.nn.functional.interpolate(logits, size=scaled.shape, mode="nearest-exact")
    return (torch.sigmoid(logits)[0, 0] >= 0.5).numpy().astype(np.uint8)


@pytest.fixture(scope="module")
def msa_model(tiny_sam_checkpoint, tmp_path_factory):
    """A random vit_tiny FedMSA model (SYNTHETIC weights) saved as a bundle's model.pt, and the network."""
    torch.manual_seed(1)
    network = MSASegmenter(model_type="vit_tiny", image_size=64, checkpoint=str(tiny_sam_checkpoint))
    out = tmp_path_factory.mktemp("msa_model")
    (out / "train").mkdir()
    torch.save(network.state_dict(), out / "train" / "model.pt")
    return out, network


def test_msa_on_mha_and_dicom_series_with_a_corrupt_input(msa_model, tiny_sam_checkpoint, readme_command, tmp_path,
                                                           write_itk_volume, write_dicom_series):
    out, network = msa_model
    scans = tmp_path / "scans"
    mha = write_itk_volume(scans / "Case00.mha", _scan(0), (0.7, 0.8, 3.0), (12.0, -30.0, 4.0), ROTATION)
    series = write_dicom_series(scans / "patient2" / "t2_axial", _scan(1, (36, 40, 5)), (0.6, 0.55, 3.5), (-5.0, 8.0, 1.0), ROTATION)
    (scans / "broken.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 900 900 900\nendian: little\nencoding: raw\n\n\x00\x01")
    (scans / "notes.txt").write_text("not an input")
    env = {"INPUT": str(scans), "OUT": str(out), "SAM_CKPT": str(tiny_sam_checkpoint)}
    log = readme_command("msa", "Inference on new patients", env, [*SMALL, "--model_type", "vit_tiny", "--dicom_seg", "True"],
                         in_process=True)
    patients = out / "patients"

    summary = json.loads((patients / "inference_summary.json").read_text())
    status = {c["input"]: c["status"] for c in summary["cases"]}
    assert status == {str(mha): "written", str(scans / "broken.nrrd"): "skipped", str(series): "written"}
    problem = next(c["problem"] for c in summary["cases"] if c["status"] == "skipped")
    assert "header declares shape (900, 900, 900)" in problem
    assert f"skipped {scans / 'broken.nrrd'}: header declares" in log
    assert f"{mha}: volume 40x32x6, spacing 0.7x0.8x3 mm -> {patients / 'Case00_mask.nii.gz'}" in log

    for source, name in ((mha, "Case00"), (series, "patient2/t2_axial")):
        mask_path = patients / f"{name}_mask.nii.gz"
        _assert_same_geometry(mask_path, source)
        mask = read_volume(mask_path).array
        volume = read_volume(source).array
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        for k in (0, volume.shape[2] - 1):
            np.testing.assert_array_equal(mask[..., k], _expected_slice_mask(network, volume, k), err_msg=f"{name} slice {k}")
        overlays = sorted((patients / "overlays").glob(f"{name}_k*.png"))
        assert 1 <= len(overlays) <= 3
        assert Image.open(overlays[0]).size == volume.shape[:2]  # width = X, height = Y (rows along j)
    assert 0 < read_volume(patients / "Case00_mask.nii.gz").array.sum() < _scan(0).size  # not empty, not everything
    assert not [p for p in patients.rglob(".*")], "temporary files left behind"

    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(patients / "patient2" / "t2_axial_seg.dcm")
    sources = [pydicom.dcmread(f) for f in read_volume(series).files]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID and seg.Modality == "SEG"
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=[s.SOPInstanceUID for s in sources],
                                               segment_numbers=[1])[..., 0]
    mask = read_volume(patients / "patient2" / "t2_axial_mask.nii.gz").array
    np.testing.assert_array_equal(frames, mask.transpose(2, 1, 0))  # frame k = slice k, rows along j


def test_unet_standalone_equals_datalist_inference(readme_command, tmp_path, write_itk_volume):
    """The same MHA scan: prepared by tools' preparer and run through the combined (datalist) inference,
    or given raw to the standalone inference, gives the same mask and geometry."""
    torch.manual_seed(2)
    from monai.networks.nets import UNet

    network = UNet(2, 3, 1, channels=[32, 64, 128, 256, 512], strides=[2, 2, 2, 2], num_res_units=2, norm="batch")
    out = tmp_path / "run"
    (out / "train").mkdir(parents=True)
    torch.save(network.state_dict(), out / "train" / "model.pt")
    release = tmp_path / "release"
    scan, label = _scan(3), np.zeros((40, 32, 6), np.uint8)
    label[10:20, 15:25, 1:5] = 1
    write_itk_volume(release / "UCL" / "Case00.mha", scan, (0.7, 0.8, 3.0), (1.0, 2.0, 3.0), ROTATION)
    write_itk_volume(release / "UCL" / "Case00_segmentation.mha", label, (0.7, 0.8, 3.0), (1.0, 2.0, 3.0), ROTATION)
    prepare_dataset("prostate", release, tmp_path / "prepared", ["UCL"])
    env = {"DATALIST": str(tmp_path / "prepared" / "prostate" / "UCL" / "datalist.json"), "OUT": str(out),
           "INPUT": str(release / "UCL" / "Case00.mha")}
    small = [*SMALL, "--num_workers", "0"]
    readme_command("unet", "Inference", env, small, in_process=True)
    readme_command("unet", "Inference on new patients", env, [*SMALL, "--mask_format", "nrrd"], in_process=True)
    from_datalist = read_volume(out / "predictions" / "UCL" / "Case00_prostate.nii.gz")
    standalone = read_volume(out / "patients" / "Case00_mask.nrrd")
    np.testing.assert_array_equal(standalone.array, from_datalist.array)
    np.testing.assert_allclose(standalone.affine, from_datalist.affine, atol=1e-5)
    assert 0 < standalone.array.sum() < standalone.array.size
    _assert_same_geometry(out / "patients" / "Case00_mask.nrrd", release / "UCL" / "Case00.mha")


def test_sam_on_2d_images_stops_or_skips_corrupt_inputs(tiny_sam_checkpoint, readme_command, tmp_path):
    torch.manual_seed(3)
    network = SAMSegmenter(model_type="vit_tiny", image_size=64, checkpoint=str(tiny_sam_checkpoint))
    out = tmp_path / "run"
    (out / "train").mkdir(parents=True)
    torch.save(network.state_dict(), out / "train" / "model.pt")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    rgb = np.random.default_rng(0).integers(0, 255, (30, 44, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(photos / "b_fundus.jpg")
    env = {"INPUT": str(photos), "OUT": str(out), "SAM_CKPT": str(tiny_sam_checkpoint)}
    extra = [*SMALL, "--model_type", "vit_tiny"]

    with pytest.raises(RuntimeError) as err:  # monai.bundle wraps what its expressions raise
        readme_command("sam", "Inference on new patients", env, [*extra, "--stop_on_error", "True"], in_process=True)
    assert isinstance(err.value.__cause__, DataError)
    assert "a_truncated.png: unreadable or corrupted file" in str(err.value.__cause__)
    assert not list((out / "patients").glob("b_fundus*")), "stopped at the first input, nothing after it"

    readme_command("sam", "Inference on new patients", env, extra, in_process=True)
    mask = np.asarray(Image.open(out / "patients" / "b_fundus_mask.png"))
    assert mask.shape == (30, 44) and set(np.unique(mask)) <= {0, 255}
    assert Image.open(out / "patients" / "overlays" / "b_fundus.png").size == (44, 30)
    cases = json.loads((out / "patients" / "inference_summary.json").read_text())["cases"]
    assert [(c["kind"], c["status"]) for c in cases] == [("image", "skipped"), ("image", "written")]


def test_no_readable_input_fails_the_run(tiny_sam_checkpoint, readme_command, tmp_path, msa_model):
    out, _ = msa_model
    (tmp_path / "bad.mha").write_bytes(b"garbage")
    env = {"INPUT": str(tmp_path / "bad.mha"), "OUT": str(out), "SAM_CKPT": str(tiny_sam_checkpoint)}
    with pytest.raises(RuntimeError) as err:
        readme_command("msa", "Inference on new patients", env, [*SMALL, "--model_type", "vit_tiny"], in_process=True)
    assert f"no input in {tmp_path / 'bad.mha'} could be read (1 skipped" in str(err.value.__cause__)


def test_find_inputs_names_and_problems(tmp_path, write_itk_volume, write_dicom_series):
    volume = _scan(0, (8, 8, 2))
    write_itk_volume(tmp_path / "in" / "Case00.mha", volume)
    write_itk_volume(tmp_path / "in" / "Case00.nrrd", volume)
    write_itk_volume(tmp_path / "in" / "sub" / "Case01.mhd", volume)  # + Case01.raw, not an input
    write_dicom_series(tmp_path / "in" / "sub" / "dicom", volume)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "in" / "sub" / "photo.png")
    (tmp_path / "in" / ".hidden.mha").write_bytes(b"")
    found = [(c.path.relative_to(tmp_path / "in").as_posix(), c.name, c.kind) for c in find_inputs(tmp_path / "in")]
    assert found == [("Case00.mha", "Case00_mha", "volume"), ("Case00.nrrd", "Case00_nrrd", "volume"),
                     ("sub/Case01.mhd", "sub/Case01", "volume"), ("sub/dicom", "sub/dicom", "dicom"),
                     ("sub/photo.png", "sub/photo", "image")]
    assert [c.name for c in find_inputs(tmp_path / "in" / "sub" / "dicom")] == ["dicom"]
    with pytest.raises(ValueError, match="a single DICOM file: pass the folder of its series"):
        find_inputs(next((tmp_path / "in" / "sub" / "dicom").iterdir()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no volume, DICOM series or 2D image"):
        find_inputs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing not found"):
        find_inputs(tmp_path / "missing")


def test_train_config_is_the_source_of_network_and_defaults(tmp_path):
    unet = TrainConfig(BUNDLES / "unet")
    assert unet.get("image_size") == 256 and unet.get("model_type") is None
    assert unet.get("network_def", num_classes=2, sam_checkpoint=None).out_channels == 2
    with pytest.raises(ValueError, match="has no option 'sam_checkpoint'"):
        unet.get("network_def", sam_checkpoint="/weights/sam.pth")
    assert TrainConfig(BUNDLES / "msa").get("model_type") == "vit_b"
    with pytest.raises(FileNotFoundError, match="--bundle_root must be the bundle's folder"):
        TrainConfig(tmp_path)
