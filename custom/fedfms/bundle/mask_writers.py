"""Outputs of inference on new patients: masks in the input's geometry, DICOM SEG, overlay PNGs.

Every file is written to a temporary sibling and renamed into place (``atomic_path``), so a reader or
an interrupted run never sees half a file.

- Volume masks: uint8 {0, 1}, shape (X, Y, Z) and affine of the input volume, written by MONAI's
  writer for the suffix (``NibabelWriter`` for .nii / .nii.gz, ``ITKWriter`` for .mha / .nrrd; no
  resampling), so spacing, direction and origin are the input's.
- DICOM SEG (for DICOM series input): one binary Segmentation object (highdicom) with one segment per
  channel, frames referencing the source instances, property category and type SNOMED "Tissue", the
  channel name as segment label, algorithm type AUTOMATIC.
- 2D masks: PNG, 0 / 255, the input's size.
- Overlays: the prediction filled in colour over the image (``fedfms.bundle.writers.overlay``); slices of
  a volume are shown as a DICOM viewer shows an axial series: rows along j, columns along i.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data.image_writer import resolve_writer
from PIL import Image

from fedfms.core.io import atomic_path
from fedfms.bundle.writers import overlay

MASK_FORMATS = ("nii.gz", "nii", "mha", "nrrd")


def write_volume_mask(mask: np.ndarray, affine: np.ndarray, path: str | Path) -> None:
    """uint8 (X, Y, Z) mask with the 4x4 RAS ``affine`` of its input -> ``path`` (format by suffix)."""
    suffix = next(f for f in MASK_FORMATS if str(path).endswith("." + f))
    writer = resolve_writer(suffix)[0](output_dtype=np.uint8)
    writer.set_data_array(mask, channel_dim=None)
    writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
    with atomic_path(path) as tmp:
        writer.write(tmp)


def write_png(array: np.ndarray, path: str | Path) -> None:
    """uint8 (H, W) or (H, W, 3) array -> PNG at ``path``."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def overlay_slices(masks: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` slice indices k of (C, X, Y, Z) masks to show: evenly spread over the slices with
    predicted foreground, or the middle slice when there is none."""
    if count <= 0:
        return []
    foreground = np.flatnonzero(masks.any(axis=(0, 1, 2)))
    if foreground.size == 0:
        return [masks.shape[-1] // 2]
    picks = np.linspace(0, foreground.size - 1, num=min(count, foreground.size)).round().astype(int)
    return sorted({int(foreground[i]) for i in picks})


def write_volume_overlays(volume01: np.ndarray, masks: np.ndarray, slices: Sequence[int], stem: str | Path) -> list[str]:
    """Overlay PNGs ``stem_kNNN.png`` of the given slices of a [0, 1] volume (X, Y, Z) and its masks."""
    paths = []
    for k in slices:
        rgb = overlay(volume01[None, :, :, k], masks[:, :, :, k])  # (X, Y, 3)
        path = f"{stem}_k{k:03d}.png"
        write_png(np.ascontiguousarray(rgb.transpose(1, 0, 2)), path)  # rows along j, as viewers show a series
        paths.append(path)
    return paths


def write_dicom_seg(masks: np.ndarray, source_files: Sequence[str], channel_names: Sequence[str], path: str | Path,
                    algorithm: str, version: str) -> None:
    """(C, X, Y, Z) uint8 masks of a DICOM series read by ITKReader (k = index in ``source_files``) -> a
    binary DICOM SEG at ``path`` referencing those instances."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in source_files]
    if len(sources) != masks.shape[-1]:
        raise ValueError(f"{len(sources)} DICOM files for a volume of {masks.shape[-1]} slices")
    frames = np.ascontiguousarray(masks.transpose(3, 2, 1, 0)).astype(bool)  # (k, rows = j, columns = i, segment)
    identification = hd.AlgorithmIdentificationSequence(name=algorithm, version=version,
                                                         family=codes.cid7162.ArtificialIntelligence)
    segments = [
        hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=name, segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification)
        for i, name in enumerate(channel_names)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="fedfms", manufacturer_model_name=algorithm,
        software_versions=version, device_serial_number="none", series_description=f"{algorithm} segmentation",
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
