"""Plots of a leave-one-site-out study: unseen-site Dice per method beside the paper's, and the
federated runs' learning curves (validation Dice of the global model per round)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from fedfms.core.io import save_figure_atomic  # noqa: E402


def _caption(labels: Sequence[str]) -> str:
    """The data labels (synthetic data, random weights), wrapped to fit a figure."""
    return "\n".join(textwrap.fill(label, 95) for label in labels)


def _save(fig, path: Path, command: str) -> Path:
    """Write ``fig`` atomically as PNG; the study's command goes into the PNG's Description text chunk."""
    save_figure_atomic(fig, path, dpi=110, metadata={"Description": command} if command else None)
    plt.close(fig)
    return Path(path)


def plot_site_bars(rows: Sequence[Mapping], site: str, path: Path, labels: Sequence[str] = (), command: str = "") -> Path:
    """Bar chart for one held-out site: per method our unseen-site Dice (and 3D Dice when measured)
    beside the paper's (hatched); failed runs are marked. ``labels`` (synthetic data, random weights)
    go above the plot, ``command`` (the study's) into the PNG metadata. Written atomically to ``path``."""
    mine = [r for r in rows if r["held_out"] == site]
    names = [r["label"] for r in mine]
    series = [("ours: Dice", "dice", {}), ("ours: 3D Dice", "dice_3d", {"alpha": 0.6}),
              ("paper: Dice", "paper_dice", {"hatch": "//", "fill": False})]
    series = [s for s in series if any(r[s[1]] is not None for r in mine)]
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(names) + 2), 5))
    for k, (name, key, style) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(mine))]
        values = [r[key] if r[key] is not None else 0.0 for r in mine]
        bars = ax.bar(xs, values, width, label=name, **style)
        ax.bar_label(bars, labels=[f"{r[key]:.2f}" if r[key] is not None else "" for r in mine], fontsize=7)
    for i, r in enumerate(mine):
        if r["status"] != "finished":
            ax.text(i, 0.05, "failed", ha="center", color="red", rotation=90)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="Dice on the unseen site")
    ax.set_title(f"{site} held out")
    if labels:
        fig.suptitle(_caption(labels), fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _save(fig, path, command)


def plot_learning_curves(records: Sequence[Mapping], path: Path, labels: Sequence[str] = (),
                         command: str = "") -> Optional[Path]:
    """One panel per held-out site: the sample-weighted validation Dice of the global model per round
    (the server's fedfms_rounds.json), one line per federated method. None (nothing written) when no
    record has per-round history. ``labels`` and ``command`` as for plot_site_bars."""
    with_history = [r for r in records if r.get("history")]
    if not with_history:
        return None
    sites = list(dict.fromkeys(r["held_out"] for r in with_history))
    fig, axes = plt.subplots(1, len(sites), figsize=(max(8.0, 5 * len(sites)), 4.5), squeeze=False)
    for ax, site in zip(axes[0], sites):
        for rec in (r for r in with_history if r["held_out"] == site):
            points = [(h["round"], h["weighted_val_dice"]) for h in rec["history"] if h.get("weighted_val_dice") is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=rec["label"])
        ax.set(xlabel="round (global model received)", ylabel="weighted validation Dice (source sites)",
               ylim=(0, 1), title=f"{site} held out")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if labels:
        fig.suptitle(_caption(labels), fontsize=7)
    fig.tight_layout()
    return _save(fig, path, command)
