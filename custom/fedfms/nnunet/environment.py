"""nnU-Net's folder environment variables, set for the duration of one call.

nnU-Net finds its raw, preprocessed and results folders through the environment variables nnUNet_raw,
nnUNet_preprocessed and nnUNet_results, read when used (nnunetv2.paths). fedfms never keeps nnU-Net
folders: its planner and trainer objects get temporary or run-specific folders through this context.
The environment is process-wide, so calls are serialized by a lock (NVFlare's simulator runs sites
as threads of one process).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()
VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@contextmanager
def nnunet_folders(**folders: str) -> Iterator[None]:
    """Set some of nnUNet_raw / nnUNet_preprocessed / nnUNet_results to these folders, restore after."""
    unknown = set(folders) - set(VARIABLES)
    if unknown:
        raise ValueError(f"unknown nnU-Net folder variables {sorted(unknown)}; expected some of {VARIABLES}")
    with _LOCK:
        saved = {key: os.environ.get(key) for key in folders}
        os.environ.update({key: os.fspath(value) for key, value in folders.items()})
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
