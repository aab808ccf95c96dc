"""Fixtures of the study tests: prepared-looking data roots (datalists only, for planning) and small
real sites cut from the synthetic demo data (for end-to-end runs)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Dict, List, Sequence

import pytest


REPO = Path(__file__).resolve().parents[2]
#: Small sites cut from the demo data: training, validation and test samples per site.
SMALL = {"HK": (6, 2, 4), "ISBI1.5": (4, 2, 4), "UCL": (6, 2, 4)}


def write_datalist(root: Path, dataset: str, site: str, synthetic: bool = True, n_test: int = 3) -> Path:
    """A datalist.json with metadata and ``n_test`` test entries (no sample files: planning reads only this)."""
    path = root / dataset / site / "datalist.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{"image": f"images/{i}.npy", "label": f"labels/{i}.npy", "volume": "v", "slice": i} for i in range(n_test)]
    path.write_text(json.dumps({"training": entries[:1], "validation": entries[1:2], "test": entries,
                                "metadata": {"site": site, "dataset": dataset, "synthetic": synthetic}}))
    return path


@pytest.fixture
def fake_root(tmp_path) -> Path:
    """DATA_ROOT with four prostate sites (datalists only), created out of the registry's order."""
    for site in ("UCL", "BIDMC", "ISBI1.5", "HK"):
        write_datalist(tmp_path / "data", "prostate", site)
    return tmp_path / "data"


@pytest.fixture(scope="session")
def small_root(cut_demo_sites) -> Path:
    """DATA_ROOT/prostate/{HK,ISBI1.5,UCL} with a few real samples each, cut from the synthetic demo
    data (synthetic: true)."""
    return cut_demo_sites(SMALL)


@pytest.fixture(scope="session")
def cli():
    """tools/run_study.py as a module (main, parse_args, settings_from_args)."""
    spec = importlib.util.spec_from_file_location("run_study_tool", REPO / "tools" / "run_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def demo_args():
    """Builds tools/run_study.py arguments: demo profile, UCL held out, no progress bar."""

    def build(root: Path, out: Path, methods: Sequence[str], *extra: str) -> List[str]:
        return ["--dataset", "prostate", "--data-root", str(root), "--out", str(out), "--profile", "demo",
                "--held-out", "UCL", "--methods", *methods, "-q", *extra]

    return build


@pytest.fixture(scope="session")
def csv_rows():
    """Reads results.csv rows (skipping the '#' lines before the header: command, settings, labels)."""

    def read(path: Path) -> List[Dict[str, str]]:
        return list(csv.DictReader(line for line in path.read_text().splitlines() if not line.startswith("#")))

    return read
