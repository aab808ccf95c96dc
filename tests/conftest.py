"""Fixtures shared by every test area: the synthetic demo data, made once per session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Tuple

import pytest

from fedfms.data.demo import make_demo_data

#: (training, validation, test) samples to keep of a site.
SplitSizes = Tuple[int, int, int]


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The output folder of tools/make_demo_data.py: raw/prostate/ (release layout) and prostate/<site>/
    (prepared, synthetic: true in every datalist)."""
    out = tmp_path_factory.mktemp("demo")
    make_demo_data(out)
    return out


@pytest.fixture(scope="session")
def cut_demo_sites(demo_data, tmp_path_factory) -> Callable[[Mapping[str, SplitSizes]], Path]:
    """Factory: a DATA_ROOT holding prostate/<site>/datalist.json with the first (training, validation,
    test) samples of each named demo site; the sample folders are symlinked, so relative paths resolve."""

    def cut(sizes: Mapping[str, SplitSizes]) -> Path:
        root = tmp_path_factory.mktemp("data")
        for site, counts in sizes.items():
            source, target = demo_data / "prostate" / site, root / "prostate" / site
            target.mkdir(parents=True)
            for folder in ("images", "labels"):
                (target / folder).symlink_to(source / folder, target_is_directory=True)
            content = json.loads((source / "datalist.json").read_text())
            for split, n in zip(("training", "validation", "test"), counts):
                content[split] = content[split][:n]
            (target / "datalist.json").write_text(json.dumps(content))
        return root

    return cut
