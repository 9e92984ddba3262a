"""SANA 1.5 methods (depth growth, depth pruning, inference-time scaling, CAME-8bit) on PyTorch Lightning."""

__version__ = "0.1.0"
