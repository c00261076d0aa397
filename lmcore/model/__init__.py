"""The model and what travels with it: the transformer, LoRA, generation, checkpoints, Hugging Face export.

Depends on ``lmcore.io`` only; knows nothing of data files or training loops.
"""
