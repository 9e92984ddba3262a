"""Image helpers: tensors in [0, 1] to grids and PNG files (no torchvision needed)."""

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


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


def captioned_grid(
    images: torch.Tensor, captions: list[str], columns: int = 8, scale: int = 4, lines: int = 3
) -> Image.Image:
    """`[N, 3, H, W]` in [0, 1] -> a PIL grid of the images enlarged `scale` times (nearest), each caption written
    under its image (wrapped at words to the image's width, at most `lines` lines, clipped to its cell)."""
    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images: give one caption per image")
    font = ImageFont.load_default(size=11)
    cells = [to_pil(image, scale) for image in images]
    width, height = cells[0].width, cells[0].height + 13 * lines + 4
    columns = max(1, min(columns, len(cells)))
    rows = -(-len(cells) // columns)
    grid = Image.new("RGB", (columns * (width + 4) + 4, rows * (height + 4) + 4), "white")
    for i, (image, caption) in enumerate(zip(cells, captions)):
        wrapped: list[str] = []
        for word in caption.split():
            if wrapped and font.getlength(f"{wrapped[-1]} {word}") <= width:
                wrapped[-1] += f" {word}"
            else:
                wrapped.append(word)
        text = Image.new("RGB", (width, height - image.height), "white")
        ImageDraw.Draw(text).multiline_text((0, 2), "\n".join(wrapped[:lines]), fill="black", font=font, spacing=2)
        left, top = 4 + (i % columns) * (width + 4), 4 + (i // columns) * (height + 4)
        grid.paste(image, (left, top))
        grid.paste(text, (left, top + image.height))
    return grid


def to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """`[3, H, W]` in [0, 1] -> PIL image, optionally enlarged (nearest) `scale` times for viewing."""
    array = (image.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(array)
    return pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST) if scale > 1 else pil


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> `[3, H, W]` uint8."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def frame(images: torch.Tensor, good: list[bool], width: int = 2) -> torch.Tensor:
    """Frame each image of `[N, 3, H, W]` (in [0, 1]) green where `good`, red elsewhere."""
    colors = torch.tensor([[0.1, 0.8, 0.1] if ok else [0.9, 0.1, 0.1] for ok in good]).view(-1, 3, 1, 1)
    framed = colors.expand(-1, -1, images.shape[2] + 2 * width, images.shape[3] + 2 * width).clone()
    framed[:, :, width:-width, width:-width] = images
    return framed
