"""Multi-scale aspect-ratio buckets (SANA: 40 height/width ratios from 0.25 to 4.0 at each base resolution)."""

import math

from PIL import Image


def sana_buckets(base_size: int, multiple: int) -> list[tuple[int, int]]:
    """SANA's 40 (height, width) buckets scaled to about `base_size`^2 pixels, sides multiples of `multiple`.

    The ratios are those of diffusers' Sana / PixArt-Sigma tables (`ASPECT_RATIO_2048_BIN`).
    """
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

    scale = base_size / 2048
    buckets = {
        (max(multiple, round(h * scale / multiple) * multiple), max(multiple, round(w * scale / multiple) * multiple))
        for h, w in ASPECT_RATIO_2048_BIN.values()
    }
    return sorted(buckets, key=lambda hw: hw[0] / hw[1])


def resolve_buckets(
    buckets: str | list[tuple[int, int]] | None, base_size: int, multiple: int
) -> list[tuple[int, int]] | None:
    """`sana` -> `sana_buckets(base_size, multiple)`; a list of [height, width] -> tuples; None stays None."""
    if isinstance(buckets, str):
        if buckets != "sana":
            raise ValueError(f"buckets '{buckets}' is unknown: use 'sana', a list of [height, width], or null")
        return sana_buckets(base_size, multiple)
    return [tuple(b) for b in buckets] if buckets else None


def nearest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose height/width ratio is closest to the image's (in log ratio)."""
    ratio = math.log(height / width)
    return min(buckets, key=lambda hw: abs(math.log(hw[0] / hw[1]) - ratio))


def resize_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """Resize so the image covers `height` x `width`, then centre-crop to it."""
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    w, h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    image = image.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - width) // 2, (h - height) // 2
    return image.crop((left, top, left + width, top + height))
