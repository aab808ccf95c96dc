"""Fixtures of the nnU-Net tests: two tiny sites cut from the synthetic demo data, their fingerprints
and plan in a 32 px frame (a 4-stage nnU-Net: seconds on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedfms.nnunet import make_plan, merge_fingerprints, site_fingerprint


@pytest.fixture(scope="session")
def frame_size() -> int:
    return 32


@pytest.fixture(scope="session")
def two_sites(demo_data, tmp_path_factory) -> dict[str, Path]:
    """Datalists of two synthetic demo sites, UCL and HK: 6 training samples (every third slice from the
    first, so the gland is in some), 3 validation samples, the first 8 samples as test split. Sample
    folders are symlinked so relative paths resolve."""
    root = tmp_path_factory.mktemp("nnunet_sites")
    paths = {}
    for site in ("UCL", "HK"):
        source, target = demo_data / "prostate" / site, root / site
        target.mkdir()
        for folder in ("images", "labels"):
            (target / folder).symlink_to(source / folder, target_is_directory=True)
        content = json.loads((source / "datalist.json").read_text())
        content["training"] = content["training"][::3][:6]
        content["validation"] = content["validation"][:3]
        content["test"] = content["test"][:8]
        (target / "datalist.json").write_text(json.dumps(content))
        paths[site] = target / "datalist.json"
    return paths


@pytest.fixture(scope="session")
def site_fingerprints(two_sites, frame_size) -> dict[str, dict]:
    return {site: site_fingerprint(path, image_size=frame_size, progress=False) for site, path in two_sites.items()}


@pytest.fixture(scope="session")
def merged_fingerprint(site_fingerprints) -> dict:
    return merge_fingerprints([site_fingerprints["UCL"], site_fingerprints["HK"]])


@pytest.fixture(scope="session")
def plan(merged_fingerprint) -> dict:
    return make_plan(merged_fingerprint)
