"""Fixtures shared by every test area: the synthetic demo data, made once per session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Tuple

import pytest

from fedfms.data.demo import make_demo_data

#: (training, validation, test) samples to keep of a site.
SplitSizes = Tuple[int, int, int]


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The output folder of tools/make_demo_data.py: raw/prostate/ (release layout) and prostate/<site>/
    (prepared, synthetic: true in every datalist)."""
    out = tmp_path_factory.mktemp("demo")
    make_demo_data(out)
    return out


@pytest.fixture(scope="session")
def cut_demo_sites(demo_data, tmp_path_factory) -> Callable[[Mapping[str, SplitSizes]], Path]:
    """Factory: a DATA_ROOT holding prostate/<site>/datalist.json with the first (training, validation,
    test) samples of each named demo site; the sample folders are symlinked, so relative paths resolve."""

    def cut(sizes: Mapping[str, SplitSizes]) -> Path:
        root = tmp_path_factory.mktemp("data")
        for site, counts in sizes.items():
            source, target = demo_data / "prostate" / site, root / "prostate" / site
            target.mkdir(parents=True)
            for folder in ("images", "labels"):
                (target / folder).symlink_to(source / folder, target_is_directory=True)
            content = json.loads((source / "datalist.json").read_text())
            for split, n in zip(("training", "validation", "test"), counts):
                content[split] = content[split][:n]
            (target / "datalist.json").write_text(json.dumps(content))
        return root

    return cut


def _write_itk_volume(path: Path, array, spacing=(0.6, 0.6, 3.0), origin=(0.0, 0.0, 0.0), direction=None,
                      compression: bool = False) -> Path:
    """Write an (X, Y, Z) array with ITK itself: .mha, .mhd (+ .raw), .nrrd, .nii.gz, ... by suffix.
    spacing, origin and direction (3x3, columns = axis directions) are ITK's (LPS)."""
    import itk
    import numpy as np

    image = itk.image_from_array(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))  # ITK wants (Z, Y, X)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection(itk.matrix_from_array(np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)))
    path.parent.mkdir(parents=True, exist_ok=True)
    itk.imwrite(image, str(path), compression=compression)
    return path


def _write_dicom_series(folder: Path, array, spacing=(0.6, 0.6, 3.0), origin=(0.0, 0.0, 0.0), direction=None) -> Path:
    """Write an (X, Y, Z) int16 array as a SYNTHETIC MR DICOM series with pydicom, one file per k slice
    (files named in reverse slice order, so readers must sort by position). Geometry as ITK's (LPS):
    ImageOrientationPatient from direction's first two columns, ImagePositionPatient = origin + k dz n."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    array = np.asarray(array, dtype=np.int16)
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(array.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{array.shape[2] - k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.Manufacturer, ds.SeriesDescription = "MR", "fedfms tests", "SYNTHETIC test series"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "SYNTHETIC^PATIENT", "SYN0001", "", "O"
        ds.StudyDate = ds.SeriesDate = "20240101"
        ds.StudyTime, ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "120000", "", "1", ""
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * spacing[2] * direction[:, 2]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (along j), column spacing (along i)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = array.shape[1], array.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(array[:, :, k].T).tobytes()  # rows along j
        ds.save_as(str(path), enforce_file_format=True)
    return folder


@pytest.fixture(scope="session")
def write_itk_volume() -> Callable[..., Path]:
    """write_itk_volume(path, array_xyz, spacing, origin, direction, compression) -> path (ITK writes it)."""
    return _write_itk_volume


@pytest.fixture(scope="session")
def write_dicom_series() -> Callable[..., Path]:
    """write_dicom_series(folder, array_xyz, spacing, origin, direction) -> folder (pydicom, synthetic MR)."""
    return _write_dicom_series
