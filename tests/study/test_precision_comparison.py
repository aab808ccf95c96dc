"""tools/compare_precision.py's runs: the bundle commands it builds (real config files, the precision's
overrides, the final model evaluated) and its table of differences from float32."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import fedfms.study.precision as precision
from fedfms.study.precision import PrecisionRun, markdown_table, run_precision

REPO = Path(__file__).resolve().parents[2]


def test_run_precision_trains_then_evaluates_the_final_model_with_the_precision_overrides(tmp_path, monkeypatch):
    commands = []

    def record(argv, log_path, env=None, **kwargs):
        commands.append(argv)
        if "evaluate" in argv:  # what the evaluate workflow writes, for the summary read below
            out = Path(argv[argv.index("--output_dir") + 1])
            out.mkdir(parents=True)
            (out / "evaluation_summary.json").write_text(json.dumps({"dice": 0.5, "iou": 0.4, "dice_3d": 0.6,
                                                                     "per_site": {"HK": {"dice": 0.5}}}))
        return 1.0

    monkeypatch.setattr(precision, "run_logged", record)
    run = run_precision(REPO / "bundles" / "msa", ["a/datalist.json"], tmp_path, "bfloat16", {"max_epochs": 1})
    train, evaluate = commands
    for argv in commands:
        given = argv[argv.index("--config_file") + 1]
        files = ast.literal_eval(given) if given.startswith("[") else [given]
        assert all(Path(f).is_file() for f in files), files
        assert argv[argv.index("--amp") + 1] == "true" and argv[argv.index("--amp_dtype") + 1] == "bfloat16"
    assert evaluate[evaluate.index("--ckpt_path") + 1] == str(tmp_path / "bfloat16" / "train" / "model_final.pt")
    assert (run.dice, run.dice_3d, run.per_site_dice) == (0.5, 0.6, {"HK": 0.5})


def test_table_rows_and_differences_from_float32():
    runs = [PrecisionRun("float32", 0.50, 0.40, 0.60, {"HK": 0.5}, 10.0),
            PrecisionRun("bfloat16", 0.495, 0.41, None, {"HK": 0.52}, 30.0)]
    lines = markdown_table(runs).splitlines()
    assert lines[2].startswith("| float32 | 0.5000 | 0.4000 | 0.6000 | 0.5000 | 10 |")
    assert lines[4] == "| bfloat16 - float32 | -0.0050 | +0.0100 | - | +0.0200 |  |"
