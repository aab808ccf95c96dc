"""Read prepared site datalists (decathlon style; the format tools/prepare_data.py writes, README "Data") for the bundles.

A bundle's `datalist` is one site's datalist.json or a list of them; a list pools the sites, which is
the centralized baseline (the paper's SAM / MSA rows). Paths in a datalist are relative to its folder
and are resolved here, so a bundle runs from any working directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

SPLITS = ("training", "validation", "test")
SAMPLE_KEYS = ("image", "label", "volume", "slice")
NO_SLICE = -1  # "slice": null (2D source image) becomes -1, because batch collation cannot carry None


def _as_list(datalist: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str]:
    if datalist is None:
        raise ValueError("datalist is not set: pass --datalist OUT/DATASET/SITE/datalist.json (or a list of them)")
    paths = [datalist] if isinstance(datalist, (str, os.PathLike)) else list(datalist)
    if not paths:
        raise ValueError("datalist: expected a datalist.json path or a non-empty list of them, got an empty list")
    return [os.path.abspath(os.fspath(p)) for p in paths]


def _read(path: str) -> dict[str, Any]:
    if os.path.isdir(path):
        raise IsADirectoryError(f"datalist {path} is a folder, expected its datalist.json file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"datalist {path} does not exist (expected OUT/DATASET/SITE/datalist.json)")
    with open(path) as f:
        content = json.load(f)
    missing = [k for k in (*SPLITS, "metadata") if k not in content]
    if missing:
        raise ValueError(f"datalist {path}: missing top-level keys {missing}; expected {[*SPLITS, 'metadata']}")
    return content


def load_datalist(datalist: str | os.PathLike | Sequence[str | os.PathLike], split: str) -> list[dict[str, Any]]:
    """Samples of `split` ("training", "validation" or "test") from one datalist or several pooled.

    Returns dicts with absolute "image" / "label" paths, "volume" (str), "slice" (int, -1 for a 2D
    source image) and "site" (from the datalist's metadata), in datalist order.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    samples = []
    for path in _as_list(datalist):
        content = _read(path)
        root, site = os.path.dirname(path), content["metadata"].get("site", os.path.basename(os.path.dirname(path)))
        for i, item in enumerate(content[split]):
            missing = [k for k in SAMPLE_KEYS if k not in item]
            if missing:
                raise ValueError(f"datalist {path}: {split}[{i}] lacks keys {missing}; expected {list(SAMPLE_KEYS)}")
            samples.append(
                {
                    "image": os.path.join(root, item["image"]),
                    "label": os.path.join(root, item["label"]),
                    "volume": str(item["volume"]),
                    "slice": NO_SLICE if item["slice"] is None else int(item["slice"]),
                    "site": str(site),
                }
            )
    return samples


def load_metadata(datalist: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """The "metadata" block of each datalist, keyed by site name (which must be unique when pooling)."""
    metadata: dict[str, dict[str, Any]] = {}
    for path in _as_list(datalist):
        meta = _read(path)["metadata"]
        site = str(meta.get("site", os.path.basename(os.path.dirname(path))))
        if site in metadata:
            raise ValueError(f"datalist {path}: site {site!r} appears twice in the pooled datalists")
        metadata[site] = meta
    return metadata


def label_channels(datalist: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Label channel names shared by all datalists (e.g. ["prostate"] or ["OD", "OC"])."""
    names = {site: list(meta.get("label_channels", [])) for site, meta in load_metadata(datalist).items()}
    unique = {tuple(v) for v in names.values()}
    if len(unique) != 1:
        raise ValueError(f"datalists disagree on label_channels, cannot pool them: {names}")
    return list(unique.pop())


def dataset_dir(datalist: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
    """The folder holding the datalist(s) (their common parent when pooled); MONAI's `dataset_dir` property."""
    return os.path.commonpath([os.path.dirname(p) for p in _as_list(datalist)])
