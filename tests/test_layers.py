"""The package's import layers: a module imports from its own package and from lower layers only, and
the bottom layer imports neither NVFlare nor MONAI. Read from the source (ast), function-level imports
included, so an upward import fails here before it can form a cycle."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "custom" / "fedfms"
#: Bottom to top. Packages on one line are peers: they must not import each other either.
LAYERS: Sequence[Tuple[str, ...]] = (
    ("core",),
    ("networks", "transforms"),
    ("data",),
    ("bundle",),
    ("nnunet",),
    ("registry", "runtime"),
    ("reporting",),
    ("orchestration",),
    ("study",),
)


def _imports(path: Path, root: Path = PACKAGE) -> List[Tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, a module of the fedfms tree ``root``."""
    module = ".".join(["fedfms", *path.relative_to(root).with_suffix("").parts])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: level 1 is the importing module's package (module names keep "__init__")
                base = module.split(".")[: -node.level]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return found


def layering_violations(root: Path, layers: Sequence[Tuple[str, ...]]) -> List[str]:
    """Every import of a same-layer peer or of a higher layer under ``root`` (a fedfms package tree)."""
    level: Dict[str, int] = {name: i for i, names in enumerate(layers) for name in names}
    violations = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if len(parts) < 2:  # fedfms/__init__.py
            continue
        package = parts[0]
        assert package in level, f"{path}: package fedfms.{package} is in no layer of tests/test_layers.py"
        for line, target in _imports(path, root):
            names = target.split(".")
            if names[0] != "fedfms" or len(names) < 2 or names[1] == package:
                continue
            if names[1] not in level or level[names[1]] >= level[package]:
                violations.append(f"{path.relative_to(root)}:{line} (fedfms.{package}) imports {target}")
    return violations


def test_no_import_runs_back_up():
    assert layering_violations(PACKAGE, LAYERS) == []


def test_the_bottom_layer_imports_neither_nvflare_nor_monai():
    for path in (PACKAGE / "core").rglob("*.py"):
        roots = {target.split(".")[0] for _, target in _imports(path)}
        assert not roots & {"nvflare", "monai", "ignite", "fedfms"}, path


def test_the_check_catches_upward_and_peer_imports(tmp_path):
    for name, source in {"core/io.py": "import os\n", "data/a.py": "from fedfms.core.io import x\n",
                         "runtime/b.py": "def f():\n    from fedfms.registry import methods\n",
                         "registry/c.py": "from ..study import plan\n", "study/__init__.py": "from .plan import x\n",
                         "study/plan.py": "from fedfms.data import a\n", "bundle/d.py": "from . import e\n"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source)
    found = layering_violations(tmp_path, LAYERS)
    assert found == ["registry/c.py:1 (fedfms.registry) imports fedfms.study",
                     "runtime/b.py:2 (fedfms.runtime) imports fedfms.registry"], found
