"""Evaluation: perplexity and bits per byte, the n-gram and bag-of-words baselines, ROUGE, 13-gram contamination,
and the report that sets each figure next to its baseline (``table``: the rows and the gate's rules; ``report``).

Builds on ``lmcore.data`` and ``lmcore.model``; never trains a model.
"""
