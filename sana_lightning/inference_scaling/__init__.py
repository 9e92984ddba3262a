"""Inference-time scaling: candidates, judges and selection."""

from sana_lightning.inference_scaling.judges import CLIPJudge, GenEvalOracleJudge, Judge, RandomJudge, VLMJudge
from sana_lightning.inference_scaling.search import scale
from sana_lightning.inference_scaling.tournament import Verdict, best_of_n, knockout
from sana_lightning.inference_scaling.zero_order import zero_order_search

__all__ = [
    "CLIPJudge",
    "GenEvalOracleJudge",
    "Judge",
    "RandomJudge",
    "VLMJudge",
    "Verdict",
    "best_of_n",
    "knockout",
    "scale",
    "zero_order_search",
]
