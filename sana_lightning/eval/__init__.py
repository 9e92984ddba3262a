"""Evaluation: GenEval's scoring rules and detectors."""
