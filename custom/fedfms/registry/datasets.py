"""The datasets fedfms prepares, as the job generator and the study see them.

Everything here is derived from the dataset's preparer (``fedfms.data``, one per public release), so a
dataset is added by registering its preparer: its sites, label channels (-> the networks'
``num_classes``) and whether it holds volumes come from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from fedfms.data import available_datasets, get_preparer


@dataclass(frozen=True)
class Dataset:
    """name: dataset name ("prostate"); sites: default site folder names, in order; label_channels: the
    label channel names (default options); volumetric: 3D volumes sliced into 2D samples (else 2D
    images); source_release: the public release it is prepared from."""

    name: str
    sites: Tuple[str, ...]
    label_channels: Tuple[str, ...]
    volumetric: bool
    source_release: str

    @property
    def num_classes(self) -> int:
        """Output channels of a network for this dataset: one per label channel."""
        return len(self.label_channels)


def get_dataset(name: str) -> Dataset:
    """The registered dataset ``name``; ValueError listing the registered ones otherwise."""
    try:
        preparer = get_preparer(name)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    return Dataset(preparer.name, tuple(preparer.sites), tuple(preparer.label_channels), bool(preparer.volumetric),
                   preparer.source_release)


def dataset_names() -> List[str]:
    """Names of every registered dataset, sorted."""
    return available_datasets()
