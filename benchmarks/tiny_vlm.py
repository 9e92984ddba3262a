"""A tiny random Llava (CLIP vision + Llama text) with processor and chat template, saved like a downloaded VLM:
the judge benchmark's model, and the tests' (tests/tiny_models.py imports it). The builder is the package's
`build_llava` (at its tiny default sizes), which `train-verifier` trains at larger ones."""

from pathlib import Path

from sana_lightning.inference_scaling.verifier_models import build_llava


def save_tiny_llava(path: Path, tokenizer) -> Path:
    """Save a seeded tiny Llava for `tokenizer` (which must know the `<image>` token) and its processor to `path`."""
    model, processor = build_llava(tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
