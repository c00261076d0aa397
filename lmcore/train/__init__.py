"""Training: the loop, its config, distributed setup, and the torchrun entry point.

Builds on ``lmcore.data`` (shards, loader) and ``lmcore.model``; knows nothing of fine-tuning tasks.
"""
