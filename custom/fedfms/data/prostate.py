"""Multi-site prostate MRI (the release of Liu et al., used by MS-Net / SAML / FedFMS).

Expected layout under SRC (one folder per site; each case a T2 volume and its segmentation)::

    SRC/BIDMC/Case00.nii.gz   SRC/BIDMC/Case00_segmentation.nii.gz
    SRC/HK/...  SRC/I2CVB/...  SRC/ISBI/...  SRC/ISBI_1.5/... (or ISBI1.5/)  SRC/UCL/...

Segmentations are named ``CaseNN_segmentation.nii.gz`` or ``CaseNN_Segmentation.nii.gz`` (.nii also
accepted). The layout of the ISBI sites' original PROMISE12 release works too: any case may be stored as
MetaImage (``Case00.mhd`` + ``Case00.raw``, or ``.mha``), NRRD (``.nrrd``) or a DICOM series folder
(``Case00/``), image and segmentation in any of these formats; their geometry (spacing, direction,
origin) must agree. Copies of the release that use the original centre names are accepted too: RUNMC for ISBI,
BMC for ISBI1.5, HCRUDB for I2CVB (folder names match case-insensitively; any of them works in
``--sites``). Label values are {0, 1, 2} (some sites split the gland into two zones); label > 0 is the
prostate. Volumes are sliced along their last (depth) axis and every slice is kept. Site names in the
output are BIDMC, HK, I2CVB, ISBI, ISBI1.5, UCL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from fedfms.data.preparation import Case, Preparer, broken_case, load_volume_pair, register, site_folder
from fedfms.data.volume_io import find_volumes, volume_suffix
from fedfms.transforms.labels import LabelMap

SITE_FOLDERS: dict[str, tuple[str, ...]] = {
    "BIDMC": ("BIDMC",),
    "HK": ("HK",),
    "I2CVB": ("I2CVB", "HCRUDB"),
    "ISBI": ("ISBI", "RUNMC"),
    "ISBI1.5": ("ISBI1.5", "ISBI_1.5", "BMC"),
    "UCL": ("UCL",),
}
LABEL_MAP = LabelMap({"prostate": None}, allowed=(0, 1, 2), require_foreground=True)
_IMAGE = re.compile(r"^(Case\d+)$")  # file stems (volume_io.volume_stem) or DICOM series folder names
_LABEL = re.compile(r"^(Case\d+)_[sS]egmentation$")


class ProstatePreparer(Preparer):
    name = "prostate"
    sites = tuple(SITE_FOLDERS)
    source_release = "Multi-site prostate MRI (Liu et al., MS-Net/SAML release)"
    label_channels = LABEL_MAP.names
    volumetric = True

    def site_aliases(self, site: str) -> tuple[str, ...]:
        return SITE_FOLDERS[site]

    def iter_cases(self, src: Path, site: str, **options) -> Iterator[Case]:
        if options:
            raise TypeError(f"prostate takes no options, got {sorted(options)}")
        folder = site_folder(src, SITE_FOLDERS[site], site)
        images, labels = {}, {}
        for stem, paths in find_volumes(folder).items():
            if m := _IMAGE.match(stem):
                images.setdefault(m.group(1), []).extend(paths)
            elif m := _LABEL.match(stem):
                labels.setdefault(m.group(1), []).extend(paths)
        for case_id in sorted(images.keys() | labels.keys()):
            folders = [p for p in images.get(case_id, []) + labels.get(case_id, []) if p.is_dir() and volume_suffix(p)]
            if folders:
                yield broken_case(case_id, folders[0], "is a folder, expected a volume file of this name", LABEL_MAP)
                continue
            found_images, found_labels = images.get(case_id, []), labels.get(case_id, [])
            if len(found_images) > 1 or len(found_labels) > 1:
                paths = [p.name for p in found_images + found_labels]
                yield broken_case(case_id, folder / case_id, f"ambiguous files for one case: {paths}", LABEL_MAP)
            elif not found_labels:
                problem = f"image without label (expected {case_id}_segmentation or _Segmentation with a volume suffix)"
                yield broken_case(case_id, found_images[0], problem, LABEL_MAP)
            elif not found_images:
                yield broken_case(case_id, found_labels[0], f"label without image (expected {case_id}.nii.gz, .mhd, ... or a DICOM folder {case_id}/)", LABEL_MAP)
            else:
                image, label = found_images[0], found_labels[0]
                yield Case(case_id, str(image), str(label), lambda i=image, l=label: load_volume_pair(i, l), LABEL_MAP)


register(ProstatePreparer())

__all__ = ["LABEL_MAP", "SITE_FOLDERS", "ProstatePreparer"]
