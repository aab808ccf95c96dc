"""Command lines of the study's bundle steps (run with ``fedfms.orchestration.simulator.run_logged``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Union

Value = Union[str, int, float, bool, Sequence[str]]


def bundle_command(bundle_root: Path, workflow: str, configs: Sequence[str], overrides: Mapping[str, Optional[Value]]) -> List[str]:
    """``python -m monai.bundle run [workflow] --config_file ... --bundle_root ... --KEY VALUE ...``.

    workflow: "" for the train config's default "run" key, "evaluate" for evaluate.json's; configs:
    config files relative to bundle_root, e.g. "configs/train.json" (later ones override earlier ones). None values are left
    out (the bundle default applies; ``monai.bundle run`` would drop them anyway); lists are passed as
    Python literals, which is how the bundle README passes pooled datalists. FileNotFoundError names
    a missing config file before any process starts.
    """
    files = [str(Path(bundle_root) / c) for c in configs]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"bundle config {missing[0]} not found (expected the repository's bundles/ folder)")
    argv = [sys.executable, "-m", "monai.bundle", "run", *([workflow] if workflow else []),
            "--config_file", files[0] if len(files) == 1 else repr(files), "--bundle_root", str(bundle_root)]
    for key, value in overrides.items():
        if value is None:
            continue
        argv += [f"--{key}", repr([str(v) for v in value]) if isinstance(value, (list, tuple)) else str(value)]
    return argv
