"""The command-line tools: --help, dispatch through the registry, exit codes and messages."""

from __future__ import annotations

import pytest


def test_prepare_data_help_lists_registered_datasets(load_tool, capsys):
    tool = load_tool("prepare_data")
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("prostate", "brain", "fundus", "nuclei"))
    for dataset, option, layout in [("brain", "--brain-target", "partitioning_1.csv"),
                                    ("fundus", "--g1020-missing-cup", "Disc_Cup_Masks"),
                                    ("nuclei", "--pannuke-folds", "masks.npy"),
                                    ("prostate", "--skip-bad", "Case00_segmentation.nii.gz")]:
        with pytest.raises(SystemExit):
            tool.main([dataset, "--help"])
        text = capsys.readouterr().out
        assert option in text and layout in text  # its own options and its release layout


def test_prepare_data_runs_and_reports(prostate_release, fets_release, tmp_path, capsys, prepare_data_cli,
                                       read_datalist):
    src = prostate_release({"HK": 2, "UCL": 2})
    assert prepare_data_cli("prostate", "--src", src, "--out", tmp_path / "out", "--sites", "HK", "ucl") == 0
    printed = capsys.readouterr()
    assert "prostate/HK:" in printed.err and "prostate/UCL:" in printed.err  # a progress bar per site
    lines = printed.out.splitlines()
    assert lines[1].split() == ["site", "volumes", "samples", "train", "val", "skipped"]
    assert [line.split()[0] for line in lines[2:5]] == ["HK", "UCL", "total"]
    assert read_datalist(tmp_path / "out", "prostate", "UCL")["metadata"]["site"] == "UCL"

    fets = fets_release({"6": 2})
    assert prepare_data_cli("brain", "--src", fets, "--out", tmp_path / "out", "--sites", "6",
                            "--brain-target", "tc", "--seed", "5") == 0
    meta = read_datalist(tmp_path / "out", "brain", "partition_6")["metadata"]
    assert meta["label_channels"] == ["TC"] and meta["split"]["seed"] == 5


def test_prepare_data_bad_input_exit_codes(prostate_release, tmp_path, capsys, prepare_data_cli):
    src = prostate_release({"HK": 2, "UCL": 2})
    (src / "UCL" / "Case01_segmentation.nii.gz").unlink()
    out = tmp_path / "o"
    assert prepare_data_cli("prostate", "--src", src, "--out", out, "--sites", "HK", "UCL") == 1
    err = capsys.readouterr().err
    assert f"{src / 'UCL' / 'Case01.nii.gz'}: image without label" in err
    assert "nothing was written for site UCL" in err and "--skip-bad" in err
    assert (out / "prostate" / "HK").is_dir() and not (out / "prostate" / "UCL").exists()
    assert prepare_data_cli("prostate", "--src", src, "--out", out, "--sites", "UCL", "--skip-bad") == 0
    assert "skipped UCL/Case01" in capsys.readouterr().out
    # a site-level problem: no hint about --skip-bad, which would not help
    assert prepare_data_cli("prostate", "--src", src, "--out", out, "--sites", "BIDMC") == 1
    err = capsys.readouterr().err
    assert "found no folder" in err and "nothing was written for site BIDMC" in err and "--skip-bad" not in err
    # an unknown site name is a usage error, reported before anything is written
    assert prepare_data_cli("prostate", "--src", src, "--out", tmp_path / "o2", "--sites", "HK", "XYZ") == 2
    assert "unknown prostate site(s) ['XYZ']; available: BIDMC, HK" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("argv, message", [
    (["fundus", "--max-size", "-1"], "expected an integer >= 0, got -1"),
    (["fundus", "--drishti-threshold", "300"], "expected an integer in 1..255, got 300"),
    (["nuclei", "--pannuke-folds", "two"], "fold numbers like '2,3', got 'two'"),
    (["brain", "--brain-target", "wt"], "invalid choice: 'wt'"),
])
def test_bad_option_values_are_usage_errors(tmp_path, capsys, prepare_data_cli, argv, message):
    with pytest.raises(SystemExit) as exit_:
        prepare_data_cli(argv[0], "--src", tmp_path, "--out", tmp_path / "out", *argv[1:])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_make_demo_data_help(load_tool, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_tool("make_demo_data").main(["--help"])
    assert exit_.value.code == 0 and "--seed" in capsys.readouterr().out
