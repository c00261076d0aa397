"""Export a :class:`~lmcore.model.gpt.GPT` and its tokenizer as a Hugging Face ``transformers`` model directory.

``arch="modern"`` becomes ``LlamaForCausalLM`` (our RoPE already uses Llama's rotate-half
convention, so q/k weights map without permutation; the fused qkv and gate/up matrices
are split). ``arch="gpt2"`` becomes ``GPT2LMHeadModel`` (HF's Conv1D stores weights as
(in, out), so our Linear weights are transposed). The directory holds ``config.json``,
``model.safetensors``, ``generation_config.json``, ``tokenizer.json``,
``tokenizer_config.json`` (with the ChatML ``chat_template`` that renders exactly what
:mod:`lmcore.finetune.chat` renders) and ``special_tokens_map.json``, and replaces
``out_dir`` atomically. ``end_token`` is where generation stops: ``<|endoftext|>`` for a
base model, ``<|im_end|>`` for a chat (SFT) model, which then also is the tokenizer's
``eos_token``, as in Qwen's instruct releases. Options these two formats cannot express (QK-norm, logit
soft-capping, ALiBi positions, ReLU² in the gated Llama MLP, a two-way prefix, an encoder, experts) are refused,
naming the ModelConfig field; ReLU² in a GPT-2 is HF's ``relu2`` activation. The config keys and tensor names are
:mod:`lmcore.model.hf_mapping`'s, which :mod:`lmcore.model.hf_import` reads back. This module writes files only;
it does not import ``transformers``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from lmcore.io import atomic_dir
from lmcore.model.gpt import GPT, ModelConfig
from lmcore.model.hf_mapping import export_arch, to_hf_config, to_hf_tensors

EOT, PAD, IM_START, IM_END = "<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def unexportable(config: ModelConfig) -> list[str]:
    """What in ``config`` the HF Llama / GPT-2 formats cannot express, one line per option (empty: exportable)."""
    target = export_arch(config).name
    problems = []
    if config.qk_norm:
        problems.append(f"qk_norm=True (HF {target} has no query/key norm)")
    if config.logit_softcap > 0:
        problems.append(f"logit_softcap={config.logit_softcap} (HF {target} does not cap logits)")
    if config.position == "alibi":
        problems.append(f"position='alibi' (HF {target} has no ALiBi attention bias; its positions are fixed)")
    if config.activation == "relu2" and config.arch == "modern":
        problems.append("activation='relu2' with arch='modern' (HF LlamaForCausalLM's MLP is gated SwiGLU)")
    if config.attention == "prefix":
        problems.append(f"attention='prefix' (HF {target} attends causally everywhere; a two-way prefix is lost)")
    if config.attention == "bidirectional":
        problems.append(
            "attention='bidirectional' (a masked-LM encoder: transformers' BERT/RoBERTa are post-LayerNorm "
            "with a dense+GELU+LayerNorm prediction head, ModernBERT adds an embedding norm and the same head; "
            "none is this pre-norm encoder with a plain linear head, so no masked-LM class gives equal logits)"
        )
    if config.n_experts:
        problems.append(f"n_experts={config.n_experts} (HF {target} has a dense MLP in every block)")
    return problems


def _special_ids(tokenizer_path: Path, end_token: str) -> dict[str, int | None]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    return {
        "vocab_size": tok.get_vocab_size(),
        "eot": tok.token_to_id(EOT),
        "pad": tok.token_to_id(PAD),
        "end": tok.token_to_id(end_token),
    }


def _tokenizer_configs(
    context_length: int, end_token: str, chat_template: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    special = {
        "bos_token": EOT,
        "eos_token": end_token,
        "pad_token": PAD,
        "additional_special_tokens": [IM_START, IM_END],
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": chat_template or CHATML_TEMPLATE,
        **special,
    }
    return tokenizer_config, special


def export_hf(
    model: GPT, tokenizer_path: Path, out_dir: Path, *, end_token: str = EOT, chat_template: str | None = None
) -> Path:
    """Write a directory that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load; return it.

    ``end_token`` (``<|endoftext|>`` or ``<|im_end|>``) is the ``eos_token_id`` of the config and
    of ``generation_config.json``, so ``generate`` stops where lmcore's generation stops. ``chat_template``: the
    tokenizer's (a base model's own, kept); None: ChatML, which lmcore's SFT trains.
    """
    tokenizer_path, out_dir = Path(tokenizer_path), Path(out_dir)
    if problems := unexportable(model.config):
        raise ValueError(
            "cannot export to Hugging Face transformers: " + "; ".join(problems) + ". Train with those ModelConfig "
            "options off to export, or use the lmcore checkpoint (lmcore.model.checkpoint.load_trained_model)"
        )
    if end_token not in (EOT, IM_END):
        raise ValueError(f"end_token must be {EOT!r} (base model) or {IM_END!r} (chat model), got {end_token!r}")
    if not tokenizer_path.exists():
        raise FileNotFoundError(f"{tokenizer_path}: no tokenizer.json; materialize the tokenizer asset first")
    ids = _special_ids(tokenizer_path, end_token)
    c = model.config
    if ids["vocab_size"] > c.vocab_size or ids["eot"] is None or ids["end"] is None:
        raise ValueError(
            f"{tokenizer_path}: needs {EOT} and {end_token} and at most vocab_size={c.vocab_size} tokens, "
            f"has {ids['vocab_size']}"
        )
    config = to_hf_config(c)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    special_ids = {"bos_token_id": ids["eot"], "eos_token_id": ids["end"], "pad_token_id": ids["pad"]}
    config |= special_ids | {"dtype": dtype, "torch_dtype": dtype, "use_cache": True, "initializer_range": 0.02}
    generation_config = {**special_ids, "max_length": c.context_length}  # HF would stop at 20 tokens by default
    tensors = to_hf_tensors(model.state_dict(), c)
    # own, contiguous CPU copies: safetensors refuses views that share storage
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    tokenizer_config, special = _tokenizer_configs(c.context_length, end_token, chat_template)
    with atomic_dir(out_dir) as staging:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        shutil.copyfile(tokenizer_path, staging / "tokenizer.json")
        for name, obj in (
            ("config.json", config),
            ("generation_config.json", generation_config),
            ("tokenizer_config.json", tokenizer_config),
            ("special_tokens_map.json", special),
        ):
            (staging / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir
