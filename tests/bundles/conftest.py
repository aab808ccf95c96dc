"""Shared fixtures of the bundle tests: the synthetic demo data and a random SAM-format checkpoint."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import fire
import monai.bundle.__main__ as cli
import pytest
import torch

from fedfms.networks import SAMSegmenter

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_root(demo_data) -> Path:
    """tools/make_demo_data.py's synthetic six-site prostate data (synthetic: true in every datalist)."""
    return demo_data / "prostate"


@pytest.fixture(scope="session")
def small_datalist(demo_root) -> Path:
    """A subset of the smallest demo site (UCL), written next to its datalist so relative paths hold:
    6 training and 4 validation slices, and one whole volume as the test split (for 3D restacking)."""
    site = demo_root / "UCL"
    content = json.loads((site / "datalist.json").read_text())
    volume = content["test"][0]["volume"]
    content["training"] = content["training"][:6]
    content["validation"] = content["validation"][:4]
    content["test"] = [s for s in content["test"] if s["volume"] == volume]
    path = site / "datalist_small.json"
    path.write_text(json.dumps(content))
    return path


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory) -> Path:
    """A random-init vit_tiny SAM state dict in the official checkpoint format (SAM keys only; synthetic:
    no official vit_tiny weights exist). Stands in for sam_vit_b_01ec64.pth in the sam / msa commands."""
    torch.manual_seed(0)
    net = SAMSegmenter(model_type="vit_tiny", image_size=64)
    new = set(net.new_keys())
    path = tmp_path_factory.mktemp("sam") / "sam_vit_tiny_random.pth"
    torch.save({k: v for k, v in net.state_dict().items() if k not in new}, path)
    return path


def _readme_blocks(bundle: str) -> dict[str, str]:
    """The first ```bash block under each "### Heading" of bundles/BUNDLE/docs/README.md, by heading."""
    blocks, heading = {}, None
    lines = (REPO / "bundles" / bundle / "docs" / "README.md").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("### "):
            heading = line[4:].strip()
        elif line.strip() == "```bash" and heading and heading not in blocks:
            end = lines.index("```", i + 1)
            blocks[heading] = "\n".join(lines[i + 1 : end])
    return blocks


def _in_process(command: str, env: dict[str, str], extra: list[str]) -> str:
    """Run a README block of `VAR=value` lines and `python -m monai.bundle ...` commands in this process:
    the same argument list goes through the same CLI entry (fire over monai.bundle's commands), without
    paying ~5 s of interpreter and import start-up per command. Returns the captured log text."""
    variables = dict(env)
    lines = command.replace("\\\n", " ").splitlines()
    commands = [line for line in lines if line.startswith("python -m monai.bundle ")]
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name.isidentifier() and line not in commands:
            variables[name] = shlex.split(value, comments=True)[0]
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    # monai.bundle.scripts does not propagate to the root logger; fedfms' own loggers are captured too
    loggers = [logging.getLogger("monai.bundle.scripts"), logging.getLogger("fedfms")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        for i, line in enumerate(commands):
            expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: variables[m.group(1)], line)
            args = shlex.split(expanded)[3:] + (list(extra) if i == len(commands) - 1 else [])
            fire.Fire({name: getattr(cli, name) for name in ("verify_metadata", "verify_net_in_out", "ckpt_export", "run")}, command=args)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    return "\n".join(records)


@pytest.fixture(scope="session")
def readme_command():
    """readme_command(bundle, heading, env, extra, replace, in_process): run that README block with
    `extra` arguments appended to its last command and the `replace` substitutions applied; by default
    with bash from the repository root, the project's python first on PATH (returns the finished
    process), or in this process (returns the log text of monai.bundle.scripts and fedfms)."""

    def run(
        bundle: str,
        heading: str,
        env: dict[str, str],
        extra: list[str] = (),
        replace: dict[str, str] | None = None,
        in_process: bool = False,
    ):
        command = _readme_blocks(bundle)[heading]
        for old, new in (replace or {}).items():  # e.g. the paper's image size in a README line -> the test's
            assert old in command, f"{bundle} README '{heading}' no longer contains {old!r}"
            command = command.replace(old, new)
        if in_process:
            cwd = os.getcwd()
            os.chdir(REPO)
            try:
                return _in_process(command, env, list(extra))
            finally:
                os.chdir(cwd)
        full_env = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        result = subprocess.run(
            ["bash", "-c", command + " " + " ".join(extra)], cwd=REPO, env=full_env, capture_output=True, text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"{bundle} README '{heading}' failed:\n{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    return run
