"""Data stages: sources and raw corpus, cleaning and dedup, splits, the tokenizer, token shards, the loader.

Depends on ``lmcore.io`` only; knows nothing of models or training.
"""
