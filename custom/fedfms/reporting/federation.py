"""Tables and plots of a federated run: per-site Dice before/after federation, learning curves.

``history`` is the server's ``fedfms_rounds.json`` (fedfms.runtime.report.JobReport): one entry per
round with the validation Dice each training site measured on the global model it received, its
training loss and the bytes it sent, and the sample-weighted Dice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from fedfms.core.io import save_figure_atomic  # noqa: E402


def dice_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """Markdown table, one row per site: ``site``, ``role``, ``test slices`` then ``columns`` (Dice
    values, '-' when absent), and a mean row over each role."""
    head = ["site", "role", "test slices", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "-"  # noqa: E731
    for row in rows:
        lines.append("| " + " | ".join([str(row["site"]), str(row["role"]), str(row["test slices"]),
                                        *(fmt(row.get(c)) for c in columns)]) + " |")
    for role in sorted({str(r["role"]) for r in rows}):
        members = [r for r in rows if r["role"] == role]
        means = [sum(r[c] for r in members) / len(members) if all(isinstance(r.get(c), float) for r in members) else None
                 for c in columns]
        lines.append("| " + " | ".join([f"mean ({role})", "", "", *(fmt(m) for m in means)]) + " |")
    return "\n".join(lines) + "\n"


def plot_learning_curve(history: Sequence[Mapping[str, object]], path: Path, title: str = "") -> Path:
    """Two panels over rounds: validation Dice of the received global model (per site and weighted),
    and each site's training loss. Written atomically to ``path`` (PNG)."""
    rounds = [int(h["round"]) for h in history]
    sites = sorted({s for h in history for s in h["sites"]})
    fig, (dice_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for site in sites:
        points = [(h["round"], h["sites"][site]) for h in history if site in h["sites"]]
        dice_ax.plot([r for r, _ in points], [v["val_dice"] for _, v in points], marker="o", alpha=0.6, label=site)
        loss_ax.plot([r for r, _ in points], [v["train_loss"] for _, v in points], marker="o", alpha=0.8, label=site)
    weighted = [h["weighted_val_dice"] for h in history]
    dice_ax.plot(rounds, weighted, color="black", linewidth=2.5, marker="s", label="weighted by samples")
    dice_ax.set(xlabel="round (global model received)", ylabel="validation Dice", ylim=(0, 1),
                title="global model on each site's validation split")
    loss_ax.set(xlabel="round", ylabel="BCE loss", title="local training loss")
    for ax in (dice_ax, loss_ax):
        ax.set_xticks(rounds)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return Path(path)


def _mean(values: Sequence[object]) -> float:
    """Mean of the numbers among ``values`` (a round's report leaves out what a site did not send); NaN
    (a gap in the curve) when there is none."""
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return sum(numbers) / len(numbers) if numbers else float("nan")


def plot_learning_curves(histories: Mapping[str, Sequence[Mapping[str, object]]], path: Path, title: str = "") -> Path:
    """Several federated runs side by side (``histories``: run label -> its round history): the
    sample-weighted validation Dice of the received global model per round, and the training loss
    averaged over the sites, one line per run. Written atomically to ``path`` (PNG)."""
    fig, (dice_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (label, history), style in zip(histories.items(), ("-", "--", ":", "-.")):
        rounds = [int(h["round"]) for h in history]
        losses = [_mean([s["train_loss"] for s in h["sites"].values()]) for h in history]
        dice_ax.plot(rounds, [_mean([h["weighted_val_dice"]]) for h in history], style, marker="s", linewidth=2, label=label)
        loss_ax.plot(rounds, losses, style, marker="o", linewidth=2, label=label)
        for ax in (dice_ax, loss_ax):
            ax.set_xticks(rounds)
    dice_ax.set(xlabel="round (global model received)", ylabel="validation Dice, weighted by samples", ylim=(0, 1),
                title="global model on the training sites' validation splits")
    loss_ax.set(xlabel="round", ylabel="BCE loss", title="local training loss, mean over sites")
    for ax in (dice_ax, loss_ax):
        ax.grid(alpha=0.3)
    # One legend below both panels: the run labels are long (the stand-in's says what it is).
    handles, labels = dice_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", fontsize=7, ncol=1)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05 + 0.04 * len(histories), 1, 1))
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return Path(path)
