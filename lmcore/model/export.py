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
naming the ModelConfig field; ReLU² in a GPT-2 is HF's ``relu2`` activation. This module writes files only; it
does not import ``transformers``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from lmcore.io import atomic_dir
from lmcore.model.gpt import GPT, ModelConfig

EOT, PAD, IM_START, IM_END = "<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _llama_tensors(model: GPT) -> dict[str, Tensor]:
    c, sd = model.config, model.state_dict()
    q_dim, kv_dim = c.n_head * c.head_dim, c.kv_heads * c.head_dim
    out = {
        "model.embed_tokens.weight": sd["transformer.wte.weight"],
        "model.norm.weight": sd["transformer.ln_f.weight"],
    }
    for i in range(c.n_layer):
        src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = sd[src + "ln_1.weight"]
        out[dst + "post_attention_layernorm.weight"] = sd[src + "ln_2.weight"]
        names = ("q_proj", "k_proj", "v_proj")
        for kind in ("weight", "bias") if c.qkv_bias else ("weight",):
            for name, t in zip(names, sd[src + f"attn.c_attn.{kind}"].split([q_dim, kv_dim, kv_dim]), strict=True):
                out[dst + f"self_attn.{name}.{kind}"] = t
        out[dst + "self_attn.o_proj.weight"] = sd[src + "attn.c_proj.weight"]
        if c.qkv_bias:  # HF's attention_bias also puts a bias on o_proj; ours has none
            out[dst + "self_attn.o_proj.bias"] = torch.zeros(c.d_model, dtype=out[dst + "self_attn.q_proj.bias"].dtype)
        gate, up = sd[src + "mlp.c_fc.weight"].chunk(2)
        out[dst + "mlp.gate_proj.weight"], out[dst + "mlp.up_proj.weight"] = gate, up
        out[dst + "mlp.down_proj.weight"] = sd[src + "mlp.c_proj.weight"]
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _gpt2_tensors(model: GPT) -> dict[str, Tensor]:
    c, sd = model.config, model.state_dict()
    out = {}
    for name, t in sd.items():
        if name == "lm_head.weight":
            if not c.tie_embeddings:
                out[name] = t
        elif name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            out[name] = t.t()  # Conv1D weights are (in, out)
        else:
            out[name] = t
    if not c.qkv_bias:  # HF GPT-2 always has a qkv bias
        for i in range(c.n_layer):
            ref = sd[f"transformer.h.{i}.attn.c_attn.weight"]
            out[f"transformer.h.{i}.attn.c_attn.bias"] = torch.zeros(ref.size(0), dtype=ref.dtype)
    return out


def unexportable(config: ModelConfig) -> list[str]:
    """What in ``config`` the HF Llama / GPT-2 formats cannot express, one line per option (empty: exportable)."""
    target = "LlamaForCausalLM" if config.arch == "modern" else "GPT2LMHeadModel"
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
    return {"vocab_size": tok.get_vocab_size(), "eot": tok.token_to_id(EOT), "pad": tok.token_to_id(PAD),
            "end": tok.token_to_id(end_token)}  # fmt: skip


def _llama_config(model: GPT) -> dict[str, Any]:
    c = model.config
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.hidden_dim,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.context_length,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,  # transformers 4.x
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},  # transformers 5.x
        "attention_bias": c.qkv_bias,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": c.tie_embeddings,
    }


def _gpt2_config(model: GPT) -> dict[str, Any]:
    c = model.config
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.context_length,
        "n_embd": c.d_model,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": c.hidden_dim,
        "activation_function": "relu2" if c.activation == "relu2" else "gelu_new",  # gelu_new: tanh approximation
        "layer_norm_epsilon": c.norm_eps,
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "tie_word_embeddings": c.tie_embeddings,
    }


def _tokenizer_configs(context_length: int, end_token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    special = {"bos_token": EOT, "eos_token": end_token, "pad_token": PAD,
               "additional_special_tokens": [IM_START, IM_END]}  # fmt: skip
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHATML_TEMPLATE,
        **special,
    }
    return tokenizer_config, special


def export_hf(model: GPT, tokenizer_path: Path, out_dir: Path, *, end_token: str = EOT) -> Path:
    """Write a directory that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load; return it.

    ``end_token`` (``<|endoftext|>`` or ``<|im_end|>``) is the ``eos_token_id`` of the config and
    of ``generation_config.json``, so ``generate`` stops where lmcore's generation stops.
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
    modern = c.arch == "modern"
    config = _llama_config(model) if modern else _gpt2_config(model)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    special_ids = {"bos_token_id": ids["eot"], "eos_token_id": ids["end"], "pad_token_id": ids["pad"]}
    config |= special_ids | {"dtype": dtype, "torch_dtype": dtype, "use_cache": True, "initializer_range": 0.02}
    generation_config = {**special_ids, "max_length": c.context_length}  # HF would stop at 20 tokens by default
    tensors = _llama_tensors(model) if modern else _gpt2_tensors(model)
    # own, contiguous CPU copies: safetensors refuses views that share storage
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    tokenizer_config, special = _tokenizer_configs(c.context_length, end_token)
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
