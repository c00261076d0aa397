"""Training: the loop (with its checkpointer and meter), its config, training specs and summaries, distributed
setup, and the one torchrun entry point.

Builds on ``lmcore.data`` (shards, loader) and ``lmcore.model``; knows nothing of fine-tuning tasks (the entry
imports their specs by name).
"""
