"""Choosing one of several captions per image: uniformly, or weighted by a per-caption score with a temperature."""

import random
from typing import Literal

CaptionRule = Literal["uniform", "weighted"]


def caption_weights(scores: list[float], temperature: float) -> list[float]:
    """SANA's weights: score^(1/T), normalised (T -> 0 picks the best caption, large T is uniform)."""
    if temperature <= 0:
        raise ValueError(f"caption temperature must be positive, got {temperature}")
    if any(s < 0 for s in scores):
        raise ValueError(f"caption scores must be non-negative (e.g. CLIP scores), got {scores}")
    best = max(scores)
    if best == 0:
        return [1 / len(scores)] * len(scores)
    powered = [(s / best) ** (1 / temperature) for s in scores]  # relative to the best: no overflow at small T
    total = sum(powered)
    return [p / total for p in powered]


def choose_caption(
    captions: list[str], scores: list[float] | None, rule: CaptionRule, temperature: float, rng: random.Random
) -> int:
    """Index of the caption to train on. `weighted` needs one score per caption (`caption_scores` in the sample)."""
    if rule == "uniform" or len(captions) == 1:
        return rng.randrange(len(captions))
    if scores is None or len(scores) != len(captions):
        raise ValueError(
            f"caption rule 'weighted' needs one score per caption, got {len(scores or [])} for {len(captions)} "
            "captions: add `caption_scores` to the sample's .json or use data.caption_rule=uniform"
        )
    return rng.choices(range(len(captions)), weights=caption_weights(scores, temperature))[0]
