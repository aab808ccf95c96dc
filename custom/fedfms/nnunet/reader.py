"""nnU-Net reader/writer for fedfms' prepared samples (its public extension point, BaseReaderWriter).

nnU-Net's fingerprint and planner read cases through a reader class. This one reads a prepared 2D
sample exactly as bundles/nnunet feeds it to the network (fedfms.transforms.sample_transforms with the
stored channels kept and labels at the image resolution: one "frame" of image_size x image_size), so
the fingerprint describes the data the network is trained on.

Spacing: nnU-Net's convention for 2D images without physical spacing, (999, 1, 1), one unit per frame
pixel. Samples are planned in the frame, not in millimetres: fundus and nuclei images have no
physical spacing, and the other fedfms bundles also resize every slice to a fixed size rather than to
a common voxel spacing, so all methods see the same pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter

from fedfms.core.io import atomic_path
from fedfms.nnunet.labels import channels_to_label_map
from fedfms.transforms import sample_transforms

SPACING_2D = (999.0, 1.0, 1.0)  # nnU-Net's 2D convention: the dummy first axis has the largest spacing


class PreparedSampleIO(BaseReaderWriter):
    """Reads prepared .npy samples into nnU-Net's layout: image (C, 1, S, S) float32, label map
    (1, 1, S, S) int16 (fedfms.nnunet.labels), properties {"spacing": (999, 1, 1)}.

    Errors name the file. nnU-Net instantiates reader classes without arguments, so pass
    functools.partial(PreparedSampleIO, image_size=S) where it expects a class.
    """

    supported_file_endings = [".npy"]

    def __init__(self, image_size: int = 256) -> None:
        self.image_size = int(image_size)
        self.frame = sample_transforms(self.image_size, output_scale=1, three_channels=False, allow_missing_keys=True)

    def _read(self, key: str, fname: str) -> np.ndarray:
        try:
            return np.asarray(self.frame({key: os.fspath(fname)})[key])
        except Exception as err:
            cause = err
            while cause.__cause__ is not None:  # MONAI wraps the reader's error in "applying transform ..."
                cause = cause.__cause__
            first_line = (str(cause).strip().splitlines() or [""])[0]  # MONAI appends every reader's traceback
            raise ValueError(f"cannot read prepared {key} {fname}: {type(cause).__name__}: {first_line}") from err

    def read_images(self, image_fnames: Sequence[str]) -> tuple[np.ndarray, dict]:
        if len(image_fnames) != 1:
            raise ValueError(f"a prepared sample is one .npy file (all channels), got {list(image_fnames)}")
        image = self._read("image", image_fnames[0])
        return image[:, None].astype(np.float32), {"spacing": SPACING_2D}

    def read_seg(self, seg_fname: str) -> tuple[np.ndarray, dict]:
        label = self._read("label", seg_fname)
        return channels_to_label_map(label)[:, None], {"spacing": SPACING_2D}

    def write_seg(self, seg: np.ndarray, output_fname: str, properties: dict) -> None:
        """nnU-Net's export: seg (1, H, W) label map -> .npy of (H, W). fedfms writes its own outputs
        (fedfms.bundle.writers); this completes the reader/writer contract."""
        with atomic_path(output_fname) as tmp:
            np.save(tmp, np.asarray(seg)[0].astype(np.int16))
