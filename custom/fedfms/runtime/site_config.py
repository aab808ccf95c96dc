"""Per-site configuration: where a site finds its prepared data and its SAM checkpoint.

Nothing machine-specific is written into a job. Each site resolves, in this order:

1. ``<site workspace>/local/fedfms_site.json`` (the startup kit's ``local/`` folder in POC and
   production, ``WORKSPACE/<site>/local/`` in the simulator), e.g.::

       {"data_root": "/data/fedfms", "sam_checkpoint": "/weights/sam_vit_b_01ec64.pth", "device": "cuda:0"}

2. environment variables ``FEDFMS_DATA_ROOT``, ``FEDFMS_SAM_CHECKPOINT`` and ``FEDFMS_DEVICE`` of the
   site's client process.

A site's datalist is ``<data_root>/<dataset>/<data folder>/datalist.json`` (the layout
``tools/prepare_data.py`` writes) unless the file sets ``"datalist"`` explicitly. ``sam_checkpoint``
may be absent: SAM weights are then randomly initialised (the paper's -PT ablation, or a demo).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Tuple

import torch

from fedfms.core.io import write_json_atomic

SITE_CONFIG_FILE = "fedfms_site.json"
ENV_DATA_ROOT = "FEDFMS_DATA_ROOT"
ENV_SAM_CHECKPOINT = "FEDFMS_SAM_CHECKPOINT"
ENV_DEVICE = "FEDFMS_DEVICE"
_KEYS = {"data_root", "datalist", "sam_checkpoint", "device"}


class SiteConfigError(ValueError):
    """A site's configuration is missing or points at files that do not exist."""


@dataclass(frozen=True)
class SiteConfig:
    """Resolved per-site settings.

    datalist: the site's datalist.json; sam_checkpoint: official SAM weights or None (random init);
    device: torch device for the bundle (default cuda:0 when available, else cpu); source: where the values came from.
    """

    datalist: Path
    sam_checkpoint: Optional[Path]
    device: str
    source: str


def _read_file(path: Path) -> dict:
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SiteConfigError(f"{path}: cannot read the site configuration: {err}") from err
    if not isinstance(values, dict) or set(values) - _KEYS:
        raise SiteConfigError(f"{path}: expected a JSON object with keys among {sorted(_KEYS)}, got {values!r}")
    return values


def _site_values(workspace_root: str | Path, environ: Mapping[str, str]) -> Tuple[dict, str]:
    """The settings of the site file if it exists, else of the environment, and where they came from."""
    path = Path(workspace_root) / "local" / SITE_CONFIG_FILE
    if path.is_file():
        return _read_file(path), str(path)
    env = {ENV_DATA_ROOT: "data_root", ENV_SAM_CHECKPOINT: "sam_checkpoint", ENV_DEVICE: "device"}
    return {key: environ[name] for name, key in env.items() if environ.get(name)}, f"environment ({', '.join(env)})"


def _checkpoint(values: Mapping[str, str], source: str) -> Optional[Path]:
    checkpoint = Path(values["sam_checkpoint"]) if values.get("sam_checkpoint") else None
    if checkpoint is not None and not checkpoint.is_file():
        what = "is a folder, expected a PyTorch checkpoint file" if checkpoint.is_dir() else "does not exist"
        raise SiteConfigError(f"SAM checkpoint {checkpoint} (configured by {source}) {what}")
    return checkpoint


def resolve_sam_checkpoint(workspace_root: str | Path, environ: Mapping[str, str] = os.environ) -> Optional[Path]:
    """The SAM checkpoint configured for a workspace (the server's: it initialises the global model
    from it, so round 0 sends the pretrained mask decoder), or None for random initialisation."""
    values, source = _site_values(workspace_root, environ)
    return _checkpoint(values, source)


def resolve_site_config(
    workspace_root: str | Path,
    dataset: str,
    data_folder: str,
    environ: Mapping[str, str] = os.environ,
) -> SiteConfig:
    """Resolve a site's data and checkpoint from its workspace file or its environment.

    workspace_root: the site's NVFlare workspace (holds ``local/``); dataset: e.g. "prostate";
    data_folder: the site's folder under the dataset (e.g. "ISBI1.5" for client "ISBI1_5").
    Raises SiteConfigError naming what is missing.
    """
    values, source = _site_values(workspace_root, environ)
    if values.get("datalist"):
        datalist = Path(values["datalist"])
    elif values.get("data_root"):
        datalist = Path(values["data_root"]) / dataset / data_folder / "datalist.json"
    else:
        raise SiteConfigError(
            f"no data configured for this site: write {Path(workspace_root) / 'local' / SITE_CONFIG_FILE} with a 'data_root' (or 'datalist') entry, "
            f"or set {ENV_DATA_ROOT} to the folder that holds {dataset}/{data_folder}/datalist.json"
        )
    if not datalist.is_file():
        what = "is a folder, expected its datalist.json file" if datalist.is_dir() else "does not exist"
        raise SiteConfigError(f"datalist {datalist} (configured by {source}) {what}")
    checkpoint = _checkpoint(values, source)
    device = values.get("device") or ("cuda:0" if torch.cuda.is_available() else "cpu")
    return SiteConfig(datalist, checkpoint, device, source)


#: NVFlare 2.9 builds only allow-listed component classes unless the job carries its own code
#: (app/custom/, "BYOC"). A site running jobs whose code is pre-installed (pip install fedfms) allows
#: this package prefix in its local/resources.json.
COMPONENT_PREFIX = "fedfms.runtime."


def allow_fedfms_components(local_dir: str | Path) -> Path:
    """Add ``COMPONENT_PREFIX`` to ``class_allow_list`` in ``local_dir/resources.json``.

    Starts from the existing resources.json, else the provisioned resources.json.default, else
    NVFlare's default allow list (a simulator workspace has none). Returns the file written."""
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    local_dir = Path(local_dir)
    target = local_dir / "resources.json"
    source = next((p for p in (target, local_dir / "resources.json.default") if p.is_file()), None)
    resources = json.loads(source.read_text()) if source else {}
    allow = list(resources.get("class_allow_list", DEFAULT_CLASS_ALLOW_LIST))
    if COMPONENT_PREFIX not in allow:
        allow.append(COMPONENT_PREFIX)
    resources["class_allow_list"] = allow
    return write_json_atomic(target, resources)
