"""Optimizers: CAME and CAME-8bit."""

from sana_lightning.optim.came import CAME, CAME8bit

__all__ = ["CAME", "CAME8bit"]
