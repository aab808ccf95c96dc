"""Inference on new patients: the standalone ``configs/inference.json`` of every bundle runs this.

``PatientInference(...).run(PATH)`` finds the inputs at PATH (:mod:`fedfms.bundle.raw_inputs`), loads
the trained weights once, and for each input writes into ``output_dir`` (sub-folders of PATH mirrored):

    NAME_CHANNEL.nii.gz       volume mask, uint8 {0, 1}, the input's shape, spacing, direction, origin
                              (mask_format: nii.gz, nii, mha or nrrd)
    NAME_seg.dcm              DICOM SEG referencing the source series (DICOM input with dicom_seg)
    NAME_CHANNEL.png          2D image mask, 0 / 255, the input's size
    overlays/NAME_kNNN.png    a few slices (num_overlays) with the prediction overlaid; 2D: overlays/NAME.png
    inference_summary.json    every input: kind, status, outputs or the problem; rewritten after each input

Preprocessing and geometry: :mod:`fedfms.bundle.slice_inference`. An input that cannot be read
(corrupted, truncated, implausible header, not 3D, ...) is skipped with a warning naming it, or stops the
run with ``stop_on_error``; the run fails when no input could be read. Every file is written atomically.
Each volume shows a progress bar over its slices and every input ends with one log line.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedfms.core.io import atomic_path
from fedfms.core.options import as_bool, as_int
from fedfms.bundle.checkpoint import load_trained_weights
from fedfms.bundle.mask_writers import (
    MASK_FORMATS,
    overlay_slices,
    write_dicom_seg,
    write_png,
    write_volume_mask,
    write_volume_overlays,
)
from fedfms.bundle.raw_inputs import InputCase, find_inputs, read_image_input, read_volume_input
from fedfms.bundle.slice_inference import SliceSegmenter, normalize_volume, segment_image, segment_volume
from fedfms.bundle.writers import overlay
from fedfms.data.preparation import DataError

logger = logging.getLogger(__name__)


class PatientInference:
    """Apply a bundle's trained network to raw volumes, DICOM series and 2D images (module docstring).

    network: the bundle's network (built from train.json's network_def); ckpt_path: the trained weights
    (a bundle's model.pt or a federated global model such as FL_global_model.pt; required);
    image_size: the network's input size; channel_names: one per output channel (file names, SEG labels);
    batch_size: slices per forward pass; model_name: recorded in DICOM SEG and the summary.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        ckpt_path: str | None,
        image_size: int,
        channel_names: Sequence[str],
        output_dir: str,
        batch_size: int = 4,
        device: str | torch.device | None = None,
        mask_format: str = "nii.gz",
        dicom_seg: bool = False,
        num_overlays: int = 3,
        stop_on_error: bool = False,
        model_name: str = "fedfms",
    ) -> None:
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format {mask_format!r}: expected one of {', '.join(MASK_FORMATS)}")
        if not ckpt_path:
            raise ValueError("ckpt_path is empty: inference needs the trained model (a bundle's model.pt or a "
                             "federated global model, e.g. FL_global_model.pt)")
        self.network, self.ckpt_path, self.channel_names = network, str(ckpt_path), [str(c) for c in channel_names]
        self.output_dir, self.batch_size, self.mask_format = Path(output_dir), as_int("batch_size", batch_size, 1), mask_format
        self.dicom_seg, self.stop_on_error = as_bool("dicom_seg", dicom_seg), as_bool("stop_on_error", stop_on_error)
        self.num_overlays = as_int("num_overlays", num_overlays, 0)
        self.model_name = model_name
        self.device = torch.device(device) if device is not None else next(network.parameters()).device
        self.model = SliceSegmenter(network, image_size)

    def run(self, input: str | os.PathLike | None) -> dict[str, Any]:
        """Predict every input at ``input``; returns the summary also written to inference_summary.json."""
        if not input:
            raise ValueError("no input: pass --input PATH (a volume, a DICOM series folder, a 2D image, or a folder of them)")
        cases = find_inputs(input)
        load_trained_weights(self.network, self.ckpt_path)
        self.network.to(self.device).eval()
        summary: dict[str, Any] = {"input": str(input), "ckpt_path": self.ckpt_path, "model": self.model_name,
                                   "channels": self.channel_names, "cases": []}
        logger.info(f"inference: {len(cases)} input(s) in {input} -> {self.output_dir}")
        for case in cases:
            start = time.perf_counter()
            try:
                with torch.inference_mode():
                    record = self._predict(case)
            except DataError as exc:
                summary["cases"].append({"input": str(case.path), "kind": case.kind, "status": "skipped", "problem": exc.problem})
                self._write_summary(summary)
                if self.stop_on_error:
                    raise
                logger.warning(f"skipped {case.path}: {exc.problem}")
                continue
            summary["cases"].append(record)
            self._write_summary(summary)
            logger.info(f"{case.path}: {record['description']} -> {', '.join(record['outputs'][:2])}"
                        f"{' ...' if len(record['outputs']) > 2 else ''} ({time.perf_counter() - start:.1f} s)")
        done = sum(c["status"] == "written" for c in summary["cases"])
        logger.info(f"inference: {done} of {len(cases)} input(s) written to {self.output_dir}, {len(cases) - done} skipped")
        if not done:
            raise RuntimeError(f"no input in {input} could be read ({len(cases)} skipped; see {self.output_dir / 'inference_summary.json'})")
        return summary

    def _predict(self, case: InputCase) -> dict[str, Any]:
        base = self.output_dir / case.name
        overlays = self.output_dir / "overlays" / case.name
        if case.kind == "image":
            image = read_image_input(case)
            masks = segment_image(self.model, image, self.device)
            outputs = [f"{base}_{name}.png" for name in self.channel_names]
            for mask, path in zip(masks, outputs):
                write_png(mask * 255, path)
            if self.num_overlays:
                outputs.append(f"{overlays}.png")
                write_png(overlay(image, masks), outputs[-1])
            return {"input": str(case.path), "kind": case.kind, "status": "written", "outputs": outputs,
                    "shape": list(image.shape[1:]), "foreground_pixels": masks.reshape(len(masks), -1).sum(1).tolist(),
                    "description": f"image {image.shape[2]}x{image.shape[1]}"}
        volume = read_volume_input(case)
        volume01 = normalize_volume(volume.array)
        masks = segment_volume(self.model, volume01, self.batch_size, self.device)
        outputs = [f"{base}_{name}.{self.mask_format}" for name in self.channel_names]
        for mask, path in zip(masks, outputs):
            write_volume_mask(mask, volume.affine, path)
        if self.dicom_seg and case.kind == "dicom":
            outputs.append(f"{base}_seg.dcm")
            write_dicom_seg(masks, volume.files, self.channel_names, outputs[-1], self.model_name, _version())
        outputs += write_volume_overlays(volume01, masks, overlay_slices(masks, self.num_overlays), overlays)
        spacing = "x".join(f"{s:.3g}" for s in volume.spacing)
        return {"input": str(case.path), "kind": case.kind, "status": "written", "outputs": outputs,
                "shape": list(volume.array.shape), "spacing": volume.spacing.round(6).tolist(),
                "foreground_voxels": masks.reshape(len(masks), -1).sum(1).tolist(),
                "description": f"{case.kind} {'x'.join(map(str, volume.array.shape))}, spacing {spacing} mm"}

    def _write_summary(self, summary: dict[str, Any]) -> None:
        cases = [{k: v for k, v in c.items() if k != "description"} for c in summary["cases"]]
        with atomic_path(self.output_dir / "inference_summary.json") as tmp:
            Path(tmp).write_text(json.dumps({**summary, "cases": cases}, indent=1) + "\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedfms")
    except PackageNotFoundError:
        return "unknown"
