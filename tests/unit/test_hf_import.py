"""HF import: tiny transformers checkpoints, saved offline, load into lmcore's GPT with transformers' logits; export →
import → export gives the same files; what lmcore cannot compute is refused by name."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmcore.model.export import export_hf
from lmcore.model.gpt import GPT, tiny
from lmcore.model.hf_import import load_hf
from lmcore.model.hf_mapping import from_hf_config

transformers = pytest.importorskip("transformers")

ATOL = 1e-5  # float32 on CPU; measured max |diff| is about 1e-6 on logits of magnitude ~2
SHAPE = dict(vocab_size=99, max_position_embeddings=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
GPT2_SHAPE = dict(vocab_size=99, n_positions=32, n_embd=32, n_layer=2, n_head=4)
CASES = {
    "gpt2": ("GPT2", GPT2_SHAPE),
    "gpt2-untied": ("GPT2", dict(GPT2_SHAPE, tie_word_embeddings=False, n_inner=48, layer_norm_epsilon=1e-6)),
    "llama-gqa-tied": (
        "Llama",
        dict(SHAPE, num_key_value_heads=2, intermediate_size=48, tie_word_embeddings=True, rms_norm_eps=1e-5)
        | dict(rope_theta=500.0),  # transformers 5.x moves it into rope_parameters
    ),
    "llama-mqa-untied": ("Llama", dict(SHAPE, num_key_value_heads=1, intermediate_size=80, tie_word_embeddings=False)),
    "qwen2-gqa": ("Qwen2", dict(SHAPE, num_key_value_heads=2, intermediate_size=48)),
}


def _hf_model(family: str, kwargs: dict):
    """A transformers model of random weights, biases and norm scales (so a mis-mapped one cannot hide)."""
    config = getattr(transformers, f"{family}Config")(**kwargs, attn_implementation="eager")
    model = getattr(transformers, f"{family}LMHeadModel" if family == "GPT2" else f"{family}ForCausalLM")(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _max_logits_diff(hf_model, ours: GPT) -> float:
    idx = torch.randint(0, hf_model.config.vocab_size, (2, 32))
    with torch.no_grad():
        theirs = hf_model(idx).logits
        mine, _ = ours.eval()(idx)
    return (theirs - mine).abs().max().item()


@pytest.mark.parametrize("case", CASES)
def test_imported_model_computes_transformers_logits(tmp_path, case):
    torch.manual_seed(0)
    family, kwargs = CASES[case]
    hf = _hf_model(family, kwargs)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = load_hf(tmp_path)
    c = ours.config
    assert (c.arch, c.n_layer, c.d_model, c.tie_embeddings) == (
        "gpt2" if family == "GPT2" else "modern",
        2,
        32,
        hf.config.tie_word_embeddings,
    )
    if family != "GPT2":
        want = (kwargs["num_key_value_heads"], kwargs["intermediate_size"], hf.config.rms_norm_eps)
        assert (c.kv_heads, c.hidden_dim, c.norm_eps) == want
        assert c.rope_theta == kwargs.get("rope_theta", 10000.0) and c.qkv_bias == (family == "Qwen2")
    diff = _max_logits_diff(hf, ours)
    print(f"{case}: max |logits diff| = {diff:.2e}")
    assert diff < ATOL


def test_sharded_and_pytorch_bin_checkpoints_load(tmp_path):
    torch.manual_seed(0)
    hf = _hf_model("Llama", CASES["llama-gqa-tied"][1])
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert _max_logits_diff(hf, load_hf(tmp_path / "sharded")) < ATOL
    (tmp_path / "bin").mkdir()
    shutil.copy(tmp_path / "sharded" / "config.json", tmp_path / "bin")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")  # tied: holds lm_head.weight too
    assert _max_logits_diff(hf, load_hf(tmp_path / "bin")) < ATOL
    torch.save(hf.state_dict() | {"lm_head.weight": torch.zeros(99, 32)}, tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="tie_word_embeddings=True but lm_head.weight differs"):
        load_hf(tmp_path / "bin")


def test_gpt2_saved_as_base_model_with_mask_buffers_loads(tmp_path):
    """The hub's gpt2 weights have no ``transformer.`` prefix and carry the old causal-mask buffers."""
    torch.manual_seed(0)
    hf = _hf_model("GPT2", GPT2_SHAPE)
    hf.save_pretrained(tmp_path / "hf")
    tensors = {k.removeprefix("transformer."): t for k, t in load_file(tmp_path / "hf" / "model.safetensors").items()}
    for i in range(2):
        tensors[f"h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
    (tmp_path / "hub").mkdir()
    save_file(tensors, tmp_path / "hub" / "model.safetensors")
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "hub")
    assert _max_logits_diff(hf, load_hf(tmp_path / "hub")) < ATOL


@pytest.mark.parametrize(
    "overrides",
    [
        dict(arch="modern", n_kv_head=2, rope_theta=500.0, norm_eps=1e-6),
        dict(arch="modern", qkv_bias=True, tie_embeddings=False, mlp_hidden=96),
        dict(arch="gpt2", qkv_bias=True),
        dict(arch="gpt2", tie_embeddings=False, activation="relu2", dropout=0.1),
    ],
    ids=["llama-gqa", "llama-bias-untied", "gpt2", "gpt2-untied-relu2"],
)
def test_export_import_export_round_trip(tmp_path, tokenizer_path, overrides):
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=320, **overrides)).eval()
    first = export_hf(model, tokenizer_path, tmp_path / "first")
    imported = load_hf(first).eval()
    second = export_hf(imported, tokenizer_path, tmp_path / "second")
    assert json.loads((first / "config.json").read_text()) == json.loads((second / "config.json").read_text())
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Llama has no residual dropout and HF's GPT-2 always has a qkv bias: the two settings the formats decide
    expected = dataclasses.replace(model.config, **({"dropout": 0.0} if model.config.arch == "modern" else {}))
    assert imported.config == dataclasses.replace(expected, qkv_bias=expected.qkv_bias or expected.arch == "gpt2")
    idx = torch.randint(0, 320, (2, 64))
    assert torch.equal(model(idx)[0], imported(idx)[0])


def _config(family: str, **changes) -> dict:
    kwargs = GPT2_SHAPE if family == "GPT2" else dict(SHAPE, intermediate_size=48, num_key_value_heads=2)
    name = "GPT2LMHeadModel" if family == "GPT2" else f"{family}ForCausalLM"
    return getattr(transformers, f"{family}Config")(**kwargs).to_dict() | {"architectures": [name]} | changes


@pytest.mark.parametrize(
    "family, changes, named",
    [
        ("Llama", dict(architectures=["MistralForCausalLM"]), "MistralForCausalLM"),
        ("Llama", dict(rope_parameters={"rope_type": "linear", "factor": 2.0}), "rope_type='linear'"),
        ("Llama", dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_scaling="),
        ("Llama", dict(hidden_act="gelu"), "hidden_act='gelu'"),
        ("Llama", dict(head_dim=16), "head_dim=16"),
        ("Llama", dict(mlp_bias=True), "mlp_bias=True"),
        ("Qwen2", dict(use_sliding_window=True, sliding_window=16), "use_sliding_window=True"),
        ("Qwen2", dict(layer_types=["sliding_attention", "full_attention"]), "layer_types="),
        ("GPT2", dict(activation_function="gelu"), "activation_function='gelu'"),
        ("GPT2", dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx=True"),
        ("GPT2", dict(attn_pdrop=0.0), "attn_pdrop=0.0"),
        ("GPT2", dict(n_embd=None), "n_embd is missing"),
    ],
)
def test_unmappable_architecture_or_field_is_refused_by_name(family, changes, named):
    assert from_hf_config(_config(family)) is not None
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace("[", r"\[")):
        from_hf_config(_config(family, **changes))


def test_llama_output_projection_bias_must_be_zero(tmp_path):
    torch.manual_seed(0)
    hf = _hf_model("Llama", dict(SHAPE, intermediate_size=48, attention_bias=True))
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.o_proj\.bias is not zero"):
        load_hf(tmp_path)


def test_a_directory_without_config_or_weights_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(_config("GPT2")))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf(tmp_path)
