"""MONAI dictionary transforms used by the preparers and the bundles (only what MONAI lacks is defined here)."""

from fedfms.transforms.chain import image_transforms, sample_transforms
from fedfms.transforms.intensity import ScaleToUnitd, ToThreeChannelsd
from fedfms.transforms.labels import LabelMap, LabelToChannelsd
from fedfms.transforms.volume import SliceVolumed, volume_percentile_normalize

__all__ = [
    "LabelMap", "LabelToChannelsd", "image_transforms", "ScaleToUnitd", "SliceVolumed", "ToThreeChannelsd", "sample_transforms",
    "volume_percentile_normalize",
]
