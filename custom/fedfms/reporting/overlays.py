"""A grid of overlays: rows of slices, columns of image, ground truth and predictions of several models.

Each cell is :func:`fedfms.bundle.writers.overlay` (the inference workflow's overlay: prediction
filled, ground truth outlined in white), so the picture shows what the bundle's own overlays show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedfms.bundle.writers import overlay  # noqa: E402
from fedfms.core.io import save_figure_atomic  # noqa: E402


def overlay_grid(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                 predictions: Mapping[str, Sequence[np.ndarray]], path: Path, row_titles: Sequence[str] = (),
                 cell_titles: Optional[Mapping[str, Sequence[str]]] = None, title: str = "") -> Path:
    """Write a PNG grid to ``path`` (atomically) and return it.

    images: one (C, H, W) array per row, uint8 or float in [0, 1]; labels: one (L, H, W) {0, 1} mask per
    row, same H, W; predictions: column title -> one (L, H, W) {0, 1} mask per row. Columns: "image",
    "ground truth" (filled and outlined), then one per prediction (filled; ground truth outlined).
    row_titles: one per row (left margin); cell_titles: column title -> one subtitle per row (e.g. Dice).
    """
    rows = len(images)
    if rows == 0 or len(labels) != rows or any(len(p) != rows for p in predictions.values()):
        raise ValueError(f"overlay_grid: need one label and one prediction per image, got {rows} images, "
                         f"{len(labels)} labels, predictions {({k: len(v) for k, v in predictions.items()})}")
    if row_titles and len(row_titles) != rows:
        raise ValueError(f"overlay_grid: {len(row_titles)} row titles for {rows} rows")
    for index, (image, label) in enumerate(zip(images, labels)):
        shapes = [label.shape[-2:]] + [p[index].shape[-2:] for p in predictions.values()]
        if any(s != image.shape[-2:] for s in shapes):
            raise ValueError(f"overlay_grid: row {index}: image {image.shape[-2:]} but masks {shapes}")
    columns = ["image", "ground truth", *predictions]
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.9 * len(columns), 1.9 * rows + (0.5 if title else 0.2)),
                             squeeze=False)
    for r in range(rows):
        cells = [overlay(images[r], np.zeros_like(labels[r])), overlay(images[r], labels[r], labels[r])]
        cells += [overlay(images[r], masks[r], labels[r]) for masks in predictions.values()]
        for c, (ax, cell) in enumerate(zip(axes[r], cells)):
            ax.imshow(cell, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            subtitle = (cell_titles or {}).get(columns[c])
            heading = columns[c] if r == 0 else ""
            ax.set_title("\n".join(t for t in (heading, subtitle[r] if subtitle else "") if t), fontsize=7)
        if row_titles:
            axes[r][0].set_ylabel(row_titles[r], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)
