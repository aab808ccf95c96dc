"""Brain tumor MRI: the FeTS 2022 challenge training data (BraTS 2021 subjects with institution partitions).

Expected layout under SRC (the unpacked MICCAI_FeTS2022_TrainingData folder)::

    SRC/partitioning_1.csv          columns Partition_ID,Subject_ID (natural split by institution)
    SRC/partitioning_2.csv          (optional; the challenge's artificial split)
    SRC/FeTS2022_00000/FeTS2022_00000_t1ce.nii.gz   (+ _t1, _t2, _flair, unused)
    SRC/FeTS2022_00000/FeTS2022_00000_seg.nii.gz    labels 0, 1 (necrosis), 2 (edema), 4 (enhancing)

Sites are partitions of ``partitioning_1.csv`` (``--brain-partitioning`` picks another CSV); the paper's
are 1, 6, 18, 21, written as sites ``partition_1`` ... (``--sites 1 6`` or ``--sites partition_1`` both
work; any partition of the CSV can be chosen). The image is T1ce. Target (``--brain-target``): ``et`` = enhancing tumor, label 4 (the paper's
choice, default); ``tc`` = labels {1, 4}, tumor core (the reference code's choice). Slices are axial
(axis 2). ``--brain-slices all`` (default) keeps every slice; ``reference`` keeps slices with target
foreground plus every 5th slice (index % 5 == 0) without, as the reference code does. The reference's
2.5D input (slices i-1, i, i+1 as channels) is not reproduced: samples are single 2D slices.
Subjects without enhancing tumor exist, so an empty target is accepted (their slices are negatives).
Besides NIfTI, a subject's two volumes may be MetaImage (.mha, .mhd), NRRD or DICOM series folders
(``FeTS2022_00000_t1ce/``), with the same names; their geometry must agree.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator
from pathlib import Path

from fedfms.data.preparation import Case, DataError, Preparer, broken_case, load_volume_pair, register
from fedfms.data.volume_io import find_volumes
from fedfms.transforms.labels import LabelMap

FETS_LABELS = (0, 1, 2, 4)
TARGETS: dict[str, LabelMap] = {
    "et": LabelMap({"ET": (4,)}, allowed=FETS_LABELS, require_foreground=False),
    "tc": LabelMap({"TC": (1, 4)}, allowed=FETS_LABELS, require_foreground=False),
}
SLICE_SELECTIONS: dict[str, int | None] = {"all": None, "reference": 5}  # value: empty-slice stride
DEFAULT_PARTITIONS = ("1", "6", "18", "21")
SITE_PREFIX = "partition_"


def read_partitioning(csv_path: Path) -> dict[str, list[str]]:
    """Partition id -> subject ids (file order) from a FeTS partitioning CSV; DataError if malformed."""
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(csv_path, f"cannot read partitioning CSV ({exc})") from exc
    if not rows or not {"Partition_ID", "Subject_ID"} <= rows[0].keys():
        raise DataError(csv_path, "expected a CSV with columns Partition_ID,Subject_ID")
    partitions: dict[str, list[str]] = {}
    for row in rows:
        partitions.setdefault(row["Partition_ID"].strip(), []).append(row["Subject_ID"].strip())
    return partitions


class BrainPreparer(Preparer):
    name = "brain"
    sites = tuple(SITE_PREFIX + p for p in DEFAULT_PARTITIONS)
    source_release = "FeTS 2022 challenge training data (BraTS 2021), T1ce"
    label_channels = TARGETS["et"].names  # --brain-target tc: ("TC",)
    volumetric = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--brain-target", dest="target", choices=sorted(TARGETS), default="et",
                            help="et: enhancing tumor, label 4 (paper, default); tc: labels {1, 4} (reference code)")
        parser.add_argument("--brain-slices", dest="slices", choices=sorted(SLICE_SELECTIONS), default="all",
                            help="all slices (default), or the reference's foreground + every 5th empty slice")
        parser.add_argument("--brain-partitioning", dest="partitioning", default="partitioning_1.csv",
                            help="partitioning CSV, relative to SRC or absolute (default: partitioning_1.csv)")

    def available_sites(self, src: Path, partitioning: str = "partitioning_1.csv", **options) -> tuple[str, ...]:
        """Every partition of the partitioning CSV, as ``partition_N`` (numeric order)."""
        return tuple(SITE_PREFIX + p for p in sorted(read_partitioning(_csv_path(src, partitioning)), key=_as_int))

    def site_aliases(self, site: str) -> tuple[str, ...]:
        """A partition number alone ("6") names the site too."""
        return (site.removeprefix(SITE_PREFIX),)

    def iter_cases(self, src: Path, site: str, target: str = "et", slices: str = "all",
                   partitioning: str = "partitioning_1.csv") -> Iterator[Case]:
        if target not in TARGETS or slices not in SLICE_SELECTIONS:
            raise ValueError(f"target must be one of {sorted(TARGETS)}, slices one of {sorted(SLICE_SELECTIONS)}")
        label_map, stride = TARGETS[target], SLICE_SELECTIONS[slices]
        csv_path = _csv_path(src, partitioning)
        for subject in sorted(read_partitioning(csv_path)[site.removeprefix(SITE_PREFIX)]):
            folder = src / subject
            if not folder.is_dir():
                problem = "is a file, expected a subject folder" if folder.exists() else f"subject folder listed in {csv_path.name} not found"
                yield broken_case(subject, folder, problem, label_map)
                continue
            volumes = find_volumes(folder)  # FeTS ships NIfTI; MetaImage, NRRD or DICOM folders work too
            images, labels = volumes.get(f"{subject}_t1ce", []), volumes.get(f"{subject}_seg", [])
            if len(images) > 1 or len(labels) > 1:
                yield broken_case(subject, folder, f"ambiguous files: {[p.name for p in images + labels]}", label_map)
            elif not images:
                yield broken_case(subject, folder / f"{subject}_t1ce.nii.gz", "T1ce image not found", label_map)
            elif not labels:
                yield broken_case(subject, images[0], f"image without label (expected {subject}_seg.nii.gz)", label_map)
            else:
                yield Case(subject, str(images[0]), str(labels[0]),
                           lambda i=images[0], l=labels[0]: load_volume_pair(i, l), label_map, empty_slice_stride=stride)


def _csv_path(src: Path, partitioning: str) -> Path:
    """The partitioning CSV (relative to SRC or absolute); DataError if it does not exist."""
    csv_path = Path(partitioning) if Path(partitioning).is_absolute() else Path(src) / partitioning
    if csv_path.is_dir():
        raise DataError(csv_path, "is a folder, expected the partitioning CSV file")
    if not csv_path.is_file():
        raise DataError(csv_path, "partitioning CSV not found (FeTS 2022 ships partitioning_1.csv in its root)")
    return csv_path


def _as_int(value: str) -> tuple[int, str]:
    return (int(value), "") if value.isdigit() else (1 << 30, value)


register(BrainPreparer())
