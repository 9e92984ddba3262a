"""Image helpers: tensors in [0, 1] to grids and PNG files (no torchvision needed)."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def image_grid(images: torch.Tensor, columns: int = 8, padding: int = 2) -> torch.Tensor:
    """`[N, 3, H, W]` in [0, 1] -> one `[3, rows*(H+p)+p, columns*(W+p)+p]` image on a white background."""
    n, c, h, w = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    grid = torch.ones(c, rows * (h + padding) + padding, columns * (w + padding) + padding)
    for i, image in enumerate(images.float().clamp(0, 1).cpu()):
        top, left = padding + (i // columns) * (h + padding), padding + (i % columns) * (w + padding)
        grid[:, top : top + h, left : left + w] = image
    return grid


def to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """`[3, H, W]` in [0, 1] -> PIL image, optionally enlarged (nearest) `scale` times for viewing."""
    array = (image.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(array)
    return pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST) if scale > 1 else pil


def save_png(image: torch.Tensor, path: str | Path, scale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image, scale).save(path)
    return path


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> `[3, H, W]` uint8."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def frame(images: torch.Tensor, good: list[bool], width: int = 2) -> torch.Tensor:
    """Frame each image of `[N, 3, H, W]` (in [0, 1]) green where `good`, red elsewhere."""
    colors = torch.tensor([[0.1, 0.8, 0.1] if ok else [0.9, 0.1, 0.1] for ok in good]).view(-1, 3, 1, 1)
    framed = colors.expand(-1, -1, images.shape[2] + 2 * width, images.shape[3] + 2 * width).clone()
    framed[:, :, width:-width, width:-width] = images
    return framed
