"""Inference-time scaling: candidates, judges and selection."""

from sana_lightning.inference_scaling.judges import CLIPJudge, GenEvalOracleJudge, Judge, VLMJudge
from sana_lightning.inference_scaling.search import scale
from sana_lightning.inference_scaling.tournament import Verdict, best_of_n, knockout

__all__ = ["CLIPJudge", "GenEvalOracleJudge", "Judge", "VLMJudge", "Verdict", "best_of_n", "knockout", "scale"]
