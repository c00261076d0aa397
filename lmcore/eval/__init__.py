"""Evaluation: perplexity and bits per byte, the n-gram and bag-of-words baselines, ROUGE, 13-gram contamination.

Builds on ``lmcore.data`` and ``lmcore.model``; never trains a model.
"""
