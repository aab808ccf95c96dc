"""Tables of a leave-one-site-out study, in the layout of the paper's Table 1, with the paper's numbers.

``result_rows`` turns run records (fedfms.study.runs) into one flat row per run; ``write_results``
writes OUT/results.md (rows = held-out sites, columns = methods, cells "ours / paper"), results.csv
(one row per run; '#' lines first carry the command, settings and data labels) and results.json.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from fedfms.core.io import write_json_atomic, write_text_atomic
from fedfms.registry.paper import paper_scores

CSV_COLUMNS = ("held_out", "label", "method", "federated", "pretrained", "status", "dice", "iou", "dice_3d",
               "source_dice", "paper_row", "paper_dice", "paper_iou", "run", "error")


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def result_rows(records: Sequence[Mapping], dataset: str) -> List[Dict[str, object]]:
    """One row per run record: our unseen-site Dice / IoU / 3D Dice (None unless finished), the mean
    test Dice over the source sites, and the paper's Dice / IoU for the same model and unseen site
    (averaged over label channels)."""
    rows = []
    for rec in records:
        metrics = rec.get("metrics") or {}
        held = metrics.get("held_out", {})
        paper = paper_scores(dataset, rec.get("paper_row"), rec["held_out"])
        rows.append({
            "held_out": rec["held_out"], "label": rec["label"], "method": rec["method"], "federated": rec["federated"],
            "pretrained": rec["pretrained"], "status": rec["status"], "dice": held.get("dice"), "iou": held.get("iou"),
            "dice_3d": held.get("dice_3d"),
            "source_dice": _mean([s.get("dice") for s in metrics.get("sources", {}).values()]),
            "paper_row": rec.get("paper_row"),
            "paper_dice": _mean([d for d, _ in paper.values()]) if paper else None,
            "paper_iou": _mean([i for _, i in paper.values()]) if paper else None,
            "per_channel": held.get("per_channel"), "run": rec["name"],
            # The first line names the failure; the full error and log tail stay in the run's record.json.
            "error": rec["error"].splitlines()[0] if rec.get("error") else None,
        })
    return rows


def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _grid(rows: Sequence[Mapping], key: str, paper_key: Optional[str] = None) -> str:
    """Markdown table: a row per held-out site and a mean row, a column per label; cells are
    ``rows[key]`` (and `` / paper`` when ``paper_key``); 'failed' for failed runs."""
    sites = list(dict.fromkeys(r["held_out"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    cell = {(r["held_out"], r["label"]): r for r in rows}
    lines = ["| held-out site | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]

    def text(ours: Optional[float], paper: Optional[float], failed: bool) -> str:
        first = "failed" if failed else _fmt(ours)
        return f"{first} / {_fmt(paper, 3)}" if paper_key else first

    for site in sites:
        cells = []
        for label in labels:
            r = cell.get((site, label))
            cells.append("" if r is None else text(r[key], r[paper_key] if paper_key else None, r["status"] != "finished"))
        lines.append(f"| {site} | " + " | ".join(cells) + " |")
    means = []
    for label in labels:
        done = [cell[(s, label)] for s in sites if (s, label) in cell and cell[(s, label)][key] is not None]
        # The paper's mean over the same unseen sites as ours, so the two numbers compare like for like.
        paper = [r[paper_key] for r in done] if paper_key else []
        means.append(text(_mean([r[key] for r in done]), _mean(paper) if paper and None not in paper else None, False)
                     + f" (n={len(done)})")
    lines.append("| mean over held-out sites | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(rows: Sequence[Mapping], meta: Mapping) -> str:
    """The study's report: data labels, command, settings, the unseen-site Dice table with the paper's
    numbers, 3D Dice, source-site Dice, and the failed runs."""
    settings = meta["settings"]
    parts = [f"# Leave-one-site-out study: {meta['dataset']}\n"]
    parts += [f"> **{label}**\n" for label in meta["labels"]]
    parts.append(f"Command: `{meta['command']}`\n")
    parts.append("Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if k != "command") + "\n")
    parts.append("## Unseen-site Dice (ours / paper)\n")
    parts.append(_grid(rows, "dice", "paper_dice"))
    parts.append("Ours: the model trained on the other sites, tested on the held-out site's whole test split, Dice per "
                 "2D slice (sigmoid > 0.5) averaged over slices and label channels. Paper: Table 1, same model and "
                 "site ('-' where the paper has no such row); the mean row averages the same sites for both.\n")
    if any(r["dice_3d"] is not None for r in rows):
        parts.append("## Unseen-site 3D Dice (per volume, averaged over volumes)\n")
        parts.append(_grid(rows, "dice_3d"))
    parts.append("## Source sites (mean test Dice over the training sites)\n")
    parts.append(_grid(rows, "source_dice"))
    failed = [r for r in rows if r["status"] != "finished"]
    if failed:
        parts.append("## Failed runs\n")
        parts += [f"- `{r['run']}` ({r['label']}, {r['held_out']} held out): {r['error']} (details: runs/{r['run']}/record.json)"
                  for r in failed]
        parts.append("")
    parts.append(f"Wall time of the study: {meta['wall_time_s']:.0f} s.\n")
    return "\n".join(parts)


def results_csv(rows: Sequence[Mapping], meta: Mapping) -> str:
    """One line per run (CSV_COLUMNS), preceded by '#' lines with the command, settings and labels
    (read with e.g. pandas.read_csv(path, comment='#'))."""
    out = io.StringIO()
    out.write(f"# command: {meta['command']}\n# settings: {json.dumps(meta['settings'])}\n")
    out.writelines(f"# {label}\n" for label in meta["labels"])
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if r.get(k) is None else r[k]) for k in CSV_COLUMNS} for r in rows)
    return out.getvalue()


def write_results(out: Path, rows: Sequence[Mapping], meta: Mapping) -> List[Path]:
    """Write OUT/results.md, results.csv and results.json (each atomically); return their paths."""
    out = Path(out)
    files = [out / "results.md", out / "results.csv", out / "results.json"]
    write_text_atomic(files[0], results_markdown(rows, meta))
    write_text_atomic(files[1], results_csv(rows, meta))
    write_json_atomic(files[2], {**meta, "rows": list(rows)})
    return files
