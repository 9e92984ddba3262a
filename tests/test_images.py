"""Sample-grid PNGs: each image enlarged exactly, its prompt written under it."""

import numpy as np
import pytest
import torch

from sana_lightning.images import captioned_grid


def test_captioned_grid_puts_each_prompt_under_its_image():
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    captions = ["a photo of a red circle left of a blue square", "", "two squares", "", "a photo of a circle"]
    grid = np.asarray(captioned_grid(images, captions, columns=3, scale=4, lines=2)).astype(int)
    cell_width, image_height, cell_height = 8 * 4, 8 * 4, 8 * 4 + 13 * 2 + 4
    assert grid.shape == (4 + 2 * (cell_height + 4), 4 + 3 * (cell_width + 4), 3)
    for i, caption in enumerate(captions):
        left, top = 4 + (i % 3) * (cell_width + 4), 4 + (i // 3) * (cell_height + 4)
        pixels = grid[top : top + image_height, left : left + cell_width]
        expected = (images[i].permute(1, 2, 0).numpy() * 255).round().repeat(4, 0).repeat(4, 1)
        np.testing.assert_array_equal(pixels, expected)  # the image, enlarged 4x (nearest)
        text = grid[top + image_height : top + cell_height, left : left + cell_width]
        assert (text.min(-1) < 128).any() == bool(caption)  # ink under an image exactly where it has a caption
    with pytest.raises(ValueError, match="one caption per image"):
        captioned_grid(images, captions[:2])
