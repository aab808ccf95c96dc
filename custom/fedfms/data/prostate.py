"""Multi-site prostate MRI (the release of Liu et al., used by MS-Net / SAML / FedFMS).

Expected layout under SRC (one folder per site; each case a T2 volume and its segmentation)::

    SRC/BIDMC/Case00.nii.gz   SRC/BIDMC/Case00_segmentation.nii.gz
    SRC/HK/...  SRC/I2CVB/...  SRC/ISBI/...  SRC/ISBI_1.5/... (or ISBI1.5/)  SRC/UCL/...

Segmentations are named ``CaseNN_segmentation.nii.gz`` or ``CaseNN_Segmentation.nii.gz`` (.nii also
accepted). Copies of the release that use the original centre names are accepted too: RUNMC for ISBI,
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
_IMAGE = re.compile(r"^(Case\d+)\.nii(\.gz)?$")
_LABEL = re.compile(r"^(Case\d+)_[sS]egmentation\.nii(\.gz)?$")


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
        for path in sorted(folder.iterdir()):
            if m := _IMAGE.match(path.name):
                images.setdefault(m.group(1), []).append(path)
            elif m := _LABEL.match(path.name):
                labels.setdefault(m.group(1), []).append(path)
        for case_id in sorted(images.keys() | labels.keys()):
            found_images, found_labels = images.get(case_id, []), labels.get(case_id, [])
            if len(found_images) > 1 or len(found_labels) > 1:
                paths = [p.name for p in found_images + found_labels]
                yield broken_case(case_id, folder / case_id, f"ambiguous files for one case: {paths}", LABEL_MAP)
            elif not found_labels:
                problem = f"image without label (expected {case_id}_segmentation.nii.gz or _Segmentation)"
                yield broken_case(case_id, found_images[0], problem, LABEL_MAP)
            elif not found_images:
                yield broken_case(case_id, found_labels[0], f"label without image (expected {case_id}.nii.gz)", LABEL_MAP)
            else:
                image, label = found_images[0], found_labels[0]
                yield Case(case_id, str(image), str(label), lambda i=image, l=label: load_volume_pair(i, l), LABEL_MAP)


register(ProstatePreparer())

__all__ = ["LABEL_MAP", "SITE_FOLDERS", "ProstatePreparer"]
