"""The one mapping between lmcore's :class:`~lmcore.model.gpt.GPT` and Hugging Face transformers' checkpoints.

The export (:mod:`lmcore.model.export`) reads it one way, the import (:mod:`lmcore.model.hf_import`) the other.
Per HF architecture (:data:`HF_ARCHES`): which ``config.json`` key carries which :class:`ModelConfig` field, the
HF settings lmcore's blocks imply, and which HF tensors make up each lmcore tensor (q/k/v and gate/up are split
along dim 0; GPT-2's Conv1D weights are stored transposed, (in, out)). ``LlamaForCausalLM`` and
``Qwen2ForCausalLM`` (q/k/v biases, none on o_proj: lmcore's ``qkv_bias``) become ``arch="modern"``,
``GPT2LMHeadModel`` becomes ``arch="gpt2"``. Reading a config refuses, naming the key and its value, what these
blocks cannot compute (RoPE scaling, a sliding window, another activation, biases lmcore lacks, a head size other
than d_model/n_head). This module knows nothing of files, tokenizers or ``transformers``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lmcore.model.gpt import ModelConfig

REQUIRED = object()  # Field.default of a key that every config.json of the architecture has
DEFAULT_ROPE_THETA = 10000.0  # transformers' default_theta


@dataclass(frozen=True)
class Field:
    """One ``config.json`` key and the ModelConfig field it carries."""

    hf: str  # the config.json key
    ours: str | None  # the ModelConfig field import sets; None: derived by ModelConfig, import only checks it
    resolved: str | None = None  # the ModelConfig attribute export writes when not `ours` (resolving a None)
    default: Any = REQUIRED  # the value transformers assumes when the key is absent or null
    spellings: tuple[tuple[Any, Any], ...] = ()  # (ours, HF) pairs when the two spell a value differently


@dataclass(frozen=True)
class HFArch:
    """One transformers architecture lmcore's GPT computes exactly."""

    name: str  # the class in config.json's "architectures"
    arch: str  # ModelConfig.arch it maps to
    fields: tuple[Field, ...]
    constants: dict[str, Any]  # keys export writes with these values; import refuses any other value
    implied: dict[str, Any] = field(default_factory=dict)  # keys export leaves at transformers' default; same check
    fixed: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields the architecture decides
    o_proj_bias: bool = False  # attention_bias also puts a bias on o_proj (lmcore has none: zeros out, zeros in)


_MODERN = (
    Field("vocab_size", "vocab_size"),
    Field("hidden_size", "d_model"),
    Field("intermediate_size", "mlp_hidden", "hidden_dim"),
    Field("num_hidden_layers", "n_layer"),
    Field("num_attention_heads", "n_head"),
    Field("num_key_value_heads", "n_kv_head", "kv_heads", default=None),
    Field("head_dim", None, "head_dim", default=None),
    Field("max_position_embeddings", "context_length"),
    Field("rms_norm_eps", "norm_eps", default=1e-6),
    Field("rope_theta", "rope_theta", default=DEFAULT_ROPE_THETA),  # transformers 4.x; 5.x: rope_parameters
    Field("tie_word_embeddings", "tie_embeddings", default=False),
)
_MODERN_CONSTANTS = {"hidden_act": "silu", "attention_dropout": 0.0}
LLAMA = HFArch(
    name="LlamaForCausalLM",
    arch="modern",
    fields=(*_MODERN, Field("attention_bias", "qkv_bias", default=False)),
    constants={"model_type": "llama", **_MODERN_CONSTANTS, "mlp_bias": False},
    implied={"rope_scaling": None},
    o_proj_bias=True,
)
QWEN2 = HFArch(
    name="Qwen2ForCausalLM",
    arch="modern",
    fields=_MODERN,
    constants={"model_type": "qwen2", **_MODERN_CONSTANTS, "use_sliding_window": False},
    implied={"rope_scaling": None},
    fixed={"qkv_bias": True},
)
_GPT2_ACTIVATIONS = (("auto", "gelu_new"), ("relu2", "relu2"))  # gelu_new: GELU's tanh approximation
GPT2 = HFArch(
    name="GPT2LMHeadModel",
    arch="gpt2",
    fields=(
        Field("vocab_size", "vocab_size"),
        Field("n_positions", "context_length"),
        Field("n_embd", "d_model"),
        Field("n_layer", "n_layer"),
        Field("n_head", "n_head"),
        Field("n_inner", "mlp_hidden", "hidden_dim", default=None),
        Field("activation_function", "activation", default="gelu_new", spellings=_GPT2_ACTIVATIONS),
        Field("layer_norm_epsilon", "norm_eps", default=1e-5),
        Field("resid_pdrop", "dropout", default=0.1),
        Field("embd_pdrop", "dropout", default=0.1),
        Field("attn_pdrop", "dropout", default=0.1),
        Field("tie_word_embeddings", "tie_embeddings", default=True),
    ),
    constants={"model_type": "gpt2"},
    implied={"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False},
    fixed={"qkv_bias": True},  # HF's Conv1D always has a bias
)
HF_ARCHES = {a.name: a for a in (GPT2, LLAMA, QWEN2)}


def export_arch(config: ModelConfig) -> HFArch:
    """The architecture lmcore exports ``config`` as: Llama for the modern arch, GPT-2 for gpt2."""
    return LLAMA if config.arch == "modern" else GPT2


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
    """The model part of ``config.json`` for ``config`` (special token ids and dtype are the caller's)."""
    spec = export_arch(config)
    out: dict[str, Any] = {"architectures": [spec.name], **spec.constants}
    for f in spec.fields:
        value = getattr(config, f.resolved or f.ours)
        out[f.hf] = dict(f.spellings)[value] if f.spellings else value
    if spec.arch == "modern":
        out["rope_parameters"] = {"rope_type": "default", "rope_theta": config.rope_theta}  # transformers 5.x
    return out


def _rope_problems(hf: dict[str, Any], kw: dict[str, Any]) -> list[str]:
    """Refuse RoPE variants other than the plain one; take theta from transformers 5.x's rope_parameters."""
    params = hf.get("rope_parameters")
    if params is None:
        return []
    params = dict(params)
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    problems = [] if rope_type == "default" else [f"rope_parameters.rope_type={rope_type!r} (only 'default')"]
    kw["rope_theta"] = params.pop("rope_theta", kw["rope_theta"])
    if params.pop("partial_rotary_factor", 1.0) != 1.0:
        problems.append(f"rope_parameters.partial_rotary_factor={hf['rope_parameters']['partial_rotary_factor']!r}")
    problems += [f"rope_parameters.{k}={v!r}" for k, v in params.items()]
    return problems


def _read_fields(spec: HFArch, hf: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The ModelConfig keywords of ``hf``'s keys, and what in ``hf`` lmcore cannot compute."""
    kw: dict[str, Any] = {"arch": spec.arch, **spec.fixed}
    problems, source = [], {}
    for f in spec.fields:
        value = f.default if hf.get(f.hf) is None else hf[f.hf]
        ours = {h: o for o, h in f.spellings}.get(value, value)
        if value is REQUIRED:
            problems.append(f"{f.hf} is missing")
        elif f.ours is None:
            continue
        elif f.spellings and value not in {h for _, h in f.spellings}:
            problems.append(f"{f.hf}={value!r} (lmcore computes {[h for _, h in f.spellings]})")
        elif f.ours in source and kw[f.ours] != ours:
            problems.append(f"{f.hf}={value!r} differs from {source[f.ours]}={kw[f.ours]!r} (lmcore has one {f.ours})")
        else:
            kw[f.ours], source[f.ours] = ours, f.hf
    for key, want in {**spec.constants, **spec.implied}.items():
        if hf.get(key, want) != want:
            problems.append(f"{key}={hf[key]!r} (lmcore computes only {key}={want!r})")
    if (layer_types := hf.get("layer_types")) and set(layer_types) != {"full_attention"}:
        problems.append(f"layer_types={layer_types!r} (lmcore attends fully in every layer)")
    if spec.arch == "modern":
        problems += _rope_problems(hf, kw)
    return kw, problems


def hf_arch(hf: dict[str, Any]) -> HFArch:
    """The architecture of a ``config.json``; ValueError naming it when lmcore has none of its ``architectures``."""
    names = hf.get("architectures") or []
    spec = next((HF_ARCHES[n] for n in names if n in HF_ARCHES), None)
    if spec is None:
        raise ValueError(f"cannot import architectures={names!r}: lmcore imports only {sorted(HF_ARCHES)}")
    return spec


def from_hf_config(hf: dict[str, Any]) -> ModelConfig:
    """The ModelConfig of a ``config.json``; ValueError naming each architecture or key lmcore cannot compute."""
    spec = hf_arch(hf)
    kw, problems = _read_fields(spec, hf)
    if problems:
        raise ValueError(f"cannot import this {spec.name}: " + "; ".join(problems))
    floats = {f.name for f in dataclasses.fields(ModelConfig) if f.type == "float"}
    config = ModelConfig(**{k: float(v) if k in floats else v for k, v in kw.items()})
    for f in spec.fields:  # derived keys must agree; a resolved field goes back to None where that is the same
        value, resolved = hf.get(f.hf), getattr(config, f.resolved) if f.resolved else None
        if f.ours is None and value is not None and value != resolved:
            raise ValueError(f"cannot import this {spec.name}: {f.hf}={value!r} (lmcore's {f.resolved} is {resolved})")
        if f.ours and f.resolved and getattr(config, f.ours) is not None:
            plain = dataclasses.replace(config, **{f.ours: None})
            config = plain if getattr(plain, f.resolved) == resolved else config
    return config


@dataclass(frozen=True)
class Rule:
    """Which HF tensors make up one lmcore tensor."""

    ours: str | None  # lmcore state-dict name; None: an HF tensor lmcore lacks, all zeros both ways
    theirs: tuple[str, ...]  # HF names; several: ours is their concatenation along dim 0
    sizes: tuple[int, ...] = ()  # dim-0 sizes of the parts; of a zeros tensor (ours None), its shape
    transpose: bool = False  # HF's Conv1D stores (in, out); lmcore's Linear (out, in)


def _modern_rules(c: ModelConfig, spec: HFArch) -> list[Rule]:
    q_dim, kv_dim, h = c.n_head * c.head_dim, c.kv_heads * c.head_dim, c.hidden_dim
    rules = [Rule("transformer.wte.weight", ("model.embed_tokens.weight",))]
    rules.append(Rule("transformer.ln_f.weight", ("model.norm.weight",)))
    for i in range(c.n_layer):
        src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
        rules.append(Rule(src + "ln_1.weight", (dst + "input_layernorm.weight",)))
        rules.append(Rule(src + "ln_2.weight", (dst + "post_attention_layernorm.weight",)))
        for kind in ("weight", "bias") if c.qkv_bias else ("weight",):
            qkv = tuple(f"{dst}self_attn.{n}.{kind}" for n in ("q_proj", "k_proj", "v_proj"))
            rules.append(Rule(src + f"attn.c_attn.{kind}", qkv, (q_dim, kv_dim, kv_dim)))
        rules.append(Rule(src + "attn.c_proj.weight", (dst + "self_attn.o_proj.weight",)))
        if c.qkv_bias and spec.o_proj_bias:
            rules.append(Rule(None, (dst + "self_attn.o_proj.bias",), (c.d_model,)))
        rules.append(Rule(src + "mlp.c_fc.weight", (dst + "mlp.gate_proj.weight", dst + "mlp.up_proj.weight"), (h, h)))
        rules.append(Rule(src + "mlp.c_proj.weight", (dst + "mlp.down_proj.weight",)))
    return rules


def _gpt2_rules(c: ModelConfig) -> list[Rule]:
    names = ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias")
    rules = [Rule(n, (n,)) for n in names]
    for i in range(c.n_layer):
        p = f"transformer.h.{i}."
        for n in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"):
            rules.append(Rule(p + n, (p + n,)))
        for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            rules.append(Rule(p + n + ".weight", (p + n + ".weight",), transpose=True))
            if n != "attn.c_attn" or c.qkv_bias:
                rules.append(Rule(p + n + ".bias", (p + n + ".bias",)))
            else:  # HF's GPT-2 always has a qkv bias
                rules.append(Rule(None, (p + n + ".bias",), ((c.n_head + 2 * c.kv_heads) * c.head_dim,)))
    return rules


def tensor_rules(config: ModelConfig, spec: HFArch) -> list[Rule]:
    """Every tensor of ``spec``'s checkpoint of a model with ``config``, and the lmcore tensor it belongs to."""
    rules = _modern_rules(config, spec) if spec.arch == "modern" else _gpt2_rules(config)
    if not config.tie_embeddings:
        rules.append(Rule("lm_head.weight", ("lm_head.weight",)))
    return rules


def to_hf_tensors(state_dict: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """The HF tensors of an lmcore state dict (views of it; the caller copies)."""
    out: dict[str, Tensor] = {}
    dtype = state_dict["transformer.wte.weight"].dtype
    for r in tensor_rules(config, export_arch(config)):
        if r.ours is None:
            out[r.theirs[0]] = torch.zeros(r.sizes, dtype=dtype)
            continue
        t = state_dict[r.ours].t() if r.transpose else state_dict[r.ours]
        out.update(zip(r.theirs, t.split(list(r.sizes)) if r.sizes else (t,), strict=True))
    return out


def from_hf_tensors(tensors: dict[str, Tensor], config: ModelConfig, spec: HFArch) -> dict[str, Tensor]:
    """The lmcore state dict of ``spec``'s HF tensors (tied: lm_head is the embedding); ValueError naming each HF
    tensor that is missing, left over, or an lmcore-absent bias that is not zero."""
    out: dict[str, Tensor] = {}
    problems, used = [], set()
    for r in tensor_rules(config, spec):
        if missing := [n for n in r.theirs if n not in tensors]:
            problems.append(f"missing {missing}")
            continue
        used.update(r.theirs)
        if r.ours is None:
            if tensors[r.theirs[0]].any():
                problems.append(f"{r.theirs[0]} is not zero (lmcore's {config.arch} block has no such bias)")
            continue
        t = torch.cat([tensors[n] for n in r.theirs]) if len(r.theirs) > 1 else tensors[r.theirs[0]]
        out[r.ours] = t.t() if r.transpose else t
    embedding = tensor_rules(config, spec)[0].theirs[0]
    if config.tie_embeddings and "lm_head.weight" in tensors and embedding in tensors:  # a tied copy, saved anyway
        used.add("lm_head.weight")
        if not torch.equal(tensors["lm_head.weight"], tensors[embedding]):
            problems.append(f"tie_word_embeddings=True but lm_head.weight differs from {embedding}")
    if left := sorted(set(tensors) - used):
        problems.append(f"tensors lmcore has no place for: {left[:8]}{' ...' if len(left) > 8 else ''}")
    if problems:
        raise ValueError(f"cannot import this {spec.name} checkpoint: " + "; ".join(problems))
    if config.tie_embeddings:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out
