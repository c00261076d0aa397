"""Read a Hugging Face transformers checkpoint directory into lmcore's :class:`~lmcore.model.gpt.GPT`.

The directory is the hub's layout: ``config.json`` and the weights, as ``model.safetensors``, safetensors
shards listed in ``model.safetensors.index.json``, or ``pytorch_model.bin`` (or its shards and
``pytorch_model.bin.index.json``, loaded with ``weights_only``). Which architectures and settings map, and how
(GPT-2 into ``arch="gpt2"``, Llama and Qwen2 into ``arch="modern"``), is :mod:`lmcore.model.hf_mapping`, the
same code the export uses; what does not map is refused by name. This module reads files only: it neither
imports ``transformers`` nor downloads (a hub id is the caller's to resolve to a directory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from lmcore.model.gpt import GPT, ModelConfig
from lmcore.model.hf_mapping import GPT2, from_hf_config, from_hf_tensors, hf_arch

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
BUFFERS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")  # saved by older transformers; recomputed


def read_hf_config(directory: Path | str) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint directory."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json; give a directory in the Hugging Face hub's layout")
    return json.loads(path.read_text(encoding="utf-8"))


def _load(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def read_hf_tensors(directory: Path | str) -> dict[str, Tensor]:
    """Every tensor of a checkpoint directory (single file or shards), on the CPU, by its HF name."""
    directory = Path(directory)
    name = next((n for n in WEIGHTS if (directory / n).is_file()), None)
    if name is None:
        raise FileNotFoundError(f"{directory}: no weights; expected one of {list(WEIGHTS)}")
    if not name.endswith(".index.json"):
        return _load(directory / name)
    weight_map = json.loads((directory / name).read_text(encoding="utf-8"))["weight_map"]
    tensors: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        tensors.update(_load(directory / shard))
    if missing := sorted(set(weight_map) - set(tensors)):
        raise ValueError(f"{directory / name} lists tensors its shards lack: {missing[:8]}")
    return tensors


def hf_model_config(directory: Path | str) -> ModelConfig:
    """The ModelConfig of a checkpoint directory; ValueError naming what lmcore cannot compute."""
    return from_hf_config(read_hf_config(directory))


def load_hf(directory: Path | str) -> GPT:
    """lmcore's GPT (float32, CPU, train mode as built) with the weights of a checkpoint directory.

    Its logits equal transformers' for the same ids up to float rounding (tests/unit/test_hf_import.py).
    """
    hf = read_hf_config(directory)
    config = from_hf_config(hf)
    spec = hf_arch(hf)
    tensors = {k: t for k, t in read_hf_tensors(directory).items() if not k.endswith(BUFFERS)}
    if spec is GPT2 and not any(k.startswith("transformer.") for k in tensors):  # saved from GPT2Model
        tensors = {k if k.startswith("lm_head.") else "transformer." + k: t for k, t in tensors.items()}
    state = from_hf_tensors(tensors, config, spec)
    model = GPT(config)
    shapes = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    if wrong := [f"{k} {tuple(t.shape)}, expected {shapes[k]}" for k, t in state.items() if t.shape != shapes[k]]:
        raise ValueError(f"{directory}: tensor shapes disagree with config.json: {'; '.join(wrong[:8])}")
    model.load_state_dict(state)
    return model
