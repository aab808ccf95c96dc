"""The command-line tools: --help, dispatch through the registry, exit codes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_data_help_lists_registered_datasets(capsys):
    tool = load_tool("prepare_data")
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "prostate" in text and "brain" in text
    with pytest.raises(SystemExit):
        tool.main(["brain", "--help"])
    assert "--brain-target" in capsys.readouterr().out


def test_prepare_data_runs_and_reports(prostate_release, fets_release, tmp_path, capsys):
    tool = load_tool("prepare_data")
    src = prostate_release({"HK": 2, "UCL": 2})
    assert tool.main(["prostate", "--src", str(src), "--out", str(tmp_path / "out"), "--sites", "HK", "UCL"]) == 0
    text = capsys.readouterr().out
    assert "HK" in text and "total" in text
    assert (tmp_path / "out" / "prostate" / "UCL" / "datalist.json").is_file()

    fets = fets_release({"6": 2})
    assert tool.main(["brain", "--src", str(fets), "--out", str(tmp_path / "out"), "--sites", "6",
                      "--brain-target", "tc", "--seed", "5"]) == 0
    meta = json.loads((tmp_path / "out" / "brain" / "partition_6" / "datalist.json").read_text())["metadata"]
    assert meta["label_channels"] == ["TC"] and meta["split"]["seed"] == 5


def test_prepare_data_bad_input_exit_code(prostate_release, tmp_path, capsys):
    tool = load_tool("prepare_data")
    src = prostate_release({"HK": 2})
    (src / "HK" / "Case01_segmentation.nii.gz").unlink()
    assert tool.main(["prostate", "--src", str(src), "--out", str(tmp_path / "o"), "--sites", "HK"]) == 1
    assert "Case01.nii.gz: image without label" in capsys.readouterr().err
    assert tool.main(["prostate", "--src", str(src), "--out", str(tmp_path / "o"), "--sites", "HK", "--skip-bad"]) == 0
    assert "skipped HK/Case01" in capsys.readouterr().out


def test_make_demo_data_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_tool("make_demo_data").main(["--help"])
    assert exit_.value.code == 0 and "--seed" in capsys.readouterr().out
