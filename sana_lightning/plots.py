"""Matplotlib figures of block importance, as PNG files or TensorBoard images."""

import io

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image


def importance_figure(importance, removed: list[int] | None = None) -> Figure:
    """One bar chart per metric of a `pruning.Importance` (removed blocks in red) and the block x noise-level heat
    map of each.

    A pyplot-free `Figure`: no global backend is touched (notebooks keep showing their plots inline)."""
    metrics = list(importance.per_sigma)
    figure = Figure(figsize=(4.2 * len(metrics), 7))
    axes = figure.subplots(2, len(metrics), squeeze=False)
    removed = set(removed or [])
    for column, metric in enumerate(metrics):
        scores = importance.scores[metric].numpy()
        colors = ["tab:red" if i in removed else "tab:blue" for i in range(len(scores))]
        axes[0, column].bar(range(len(scores)), scores, color=colors)
        axes[0, column].set(title=f"{metric} importance", xlabel="block")
        heat = axes[1, column].imshow(importance.per_sigma[metric].numpy(), aspect="auto", cmap="viridis")
        ticks = range(0, len(importance.sigmas), max(1, len(importance.sigmas) // 5))
        axes[1, column].set_xticks(list(ticks), [f"{importance.sigmas[t]:.2f}" for t in ticks])
        axes[1, column].set(xlabel="noise level sigma", ylabel="block")
        figure.colorbar(heat, ax=axes[1, column])
    figure.tight_layout()
    return figure


def figure_to_tensor(figure: Figure) -> torch.Tensor:
    """A `[3, H, W]` uint8 image of the figure (for TensorBoard `add_image`)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    array = np.asarray(Image.open(buffer).convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)
