"""Tiny random transformers models with their processors, saved like downloads: a DETR detector here, the Llava VLM
from the judge benchmark (one builder for both)."""

from pathlib import Path

import torch

from benchmarks.tiny_vlm import save_tiny_llava  # noqa: F401  (re-exported for the tests)


def save_tiny_detr(path: Path, id2label: dict[int, str]) -> Path:
    """Save a seeded tiny DETR (ResNet backbone) detecting `id2label`'s classes, with its image processor."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], out_features=["stage4"])
    config = DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        num_queries=8,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(0)
    DetrForObjectDetection(config).save_pretrained(path)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(path)
    return path
