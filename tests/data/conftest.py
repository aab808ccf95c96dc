"""Fixtures for the data tests: tiny releases written in exactly the public layouts (NIfTI files), the
command-line tools run in-process, and readers of the prepared output."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest


def save_nifti(path: Path, array: np.ndarray, spacing: tuple[float, ...] = (0.6, 0.6, 3.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


def volume_pair(rng: np.random.Generator, shape=(24, 20, 6), label_values=(1,)) -> tuple[np.ndarray, np.ndarray]:
    """A random MRI-like volume and a box label using ``label_values`` on successive slices."""
    image = (rng.random(shape) * 700 + 50).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    for k, value in zip(range(1, shape[2] - 1), label_values * shape[2]):
        label[6:14, 5:12, k] = value
    return image, label


@pytest.fixture
def prostate_release(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a small multi-site prostate release -> its root.

    sites: folder name -> number of cases; seg_suffix: folder -> "segmentation" / "Segmentation".
    """

    def make(sites: dict[str, int] | None = None, seg_suffix: dict[str, str] | None = None,
             root_name: str = "prostate_release") -> Path:
        sites = sites or {"BIDMC": 3, "HK": 2, "I2CVB": 2, "ISBI": 4, "ISBI_1.5": 2, "UCL": 2}
        seg_suffix = {"ISBI_1.5": "Segmentation", "ISBI1.5": "Segmentation", **(seg_suffix or {})}
        root = tmp_path / root_name
        for s, (folder, n) in enumerate(sites.items()):
            for case in range(n):
                rng = np.random.default_rng([s, case])
                values = (1, 2) if folder.startswith("ISBI") else (1,)
                image, label = volume_pair(rng, shape=(24, 20, 5 + case), label_values=values)
                save_nifti(root / folder / f"Case{case:02d}.nii.gz", image)
                save_nifti(root / folder / f"Case{case:02d}_{seg_suffix.get(folder, 'segmentation')}.nii.gz", label)
        return root

    return make


@pytest.fixture
def fets_release(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a small FeTS 2022 training-data folder (partitioning_1.csv + subject folders)."""

    def make(partitions: dict[str, int] | None = None) -> Path:
        partitions = partitions or {"1": 3, "6": 2, "18": 2, "21": 2, "3": 1}
        root = tmp_path / "MICCAI_FeTS2022_TrainingData"
        rows, subject = ["Partition_ID,Subject_ID"], 0
        for partition, n in partitions.items():
            for _ in range(n):
                sid = f"FeTS2022_{subject:05d}"
                rows.append(f"{partition},{sid}")
                rng = np.random.default_rng(subject)
                image = (rng.random((16, 16, 12)) * 900).astype(np.float32)
                seg = np.zeros((16, 16, 12), np.uint8)
                seg[3:12, 3:12, 3:9] = 2  # edema
                seg[5:10, 5:10, 4:8] = 1  # necrosis: slices 4-7
                seg[6:9, 6:9, 5:7] = 4  # enhancing: slices 5-6
                for modality in ("t1", "t1ce", "t2", "flair"):
                    save_nifti(root / sid / f"{sid}_{modality}.nii.gz", image * (1 + 0.1 * len(modality)), (1.0, 1.0, 1.0))
                save_nifti(root / sid / f"{sid}_seg.nii.gz", seg, (1.0, 1.0, 1.0))
                subject += 1
        (root / "partitioning_1.csv").write_text("\n".join(rows) + "\n")
        return root

    return make


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (to compare outputs byte for byte)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(name="save_nifti")
def save_nifti_fixture() -> Callable[..., Path]:
    """save_nifti(path, array, spacing=(0.6, 0.6, 3.0)) -> path (tests cannot import conftest directly)."""
    return save_nifti


@pytest.fixture
def digest() -> Callable[[Path], dict[str, str]]:
    return tree_digest


TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _load_tool(name: str) -> ModuleType:
    """Import tools/<name>.py as a module (its main(argv) is what the command line runs)."""
    spec = importlib.util.spec_from_file_location(f"{name}_tool", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(name="load_tool")
def load_tool_fixture() -> Callable[[str], ModuleType]:
    """load_tool("prepare_data") -> the tool's module."""
    return _load_tool


@pytest.fixture
def prepare_data_cli() -> Callable[..., int]:
    """prepare_data_cli("prostate", "--src", ...) -> exit status of tools/prepare_data.py, run in-process."""
    tool = _load_tool("prepare_data")
    return lambda *argv: tool.main([str(a) for a in argv])


@pytest.fixture
def read_datalist() -> Callable[[Path, str, str], dict]:
    """read_datalist(out, dataset, site) -> the parsed OUT/DATASET/SITE/datalist.json."""
    return lambda out, dataset, site: json.loads((Path(out) / dataset / site / "datalist.json").read_text())
