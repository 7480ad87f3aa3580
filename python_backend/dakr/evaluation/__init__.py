"""Evaluation: per-volume segmentation metrics and continual-learning summaries of the accuracy matrix."""
