"""HF export: transformers loads the directory as Llama / GPT-2 and computes the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from lmcore.data.tokenizer import TokenizerConfig, train_tokenizer
from lmcore.model.export import export_hf
from lmcore.model.gpt import GPT, tiny

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    texts = ["the cat sat on the mat. the dog sat on the log. héllo wörld"] * 20
    train_tokenizer(TokenizerConfig(vocab_size=300), texts, path)
    return path


@pytest.mark.parametrize(
    "overrides, hf_class",
    [
        (dict(arch="modern", n_kv_head=2), "LlamaForCausalLM"),
        (dict(arch="modern", qkv_bias=True, tie_embeddings=False, rope_theta=500.0), "LlamaForCausalLM"),
        (dict(arch="gpt2", qkv_bias=True), "GPT2LMHeadModel"),
        (dict(arch="gpt2", tie_embeddings=False), "GPT2LMHeadModel"),
    ],
    ids=["llama-gqa", "llama-bias-untied", "gpt2", "gpt2-untied-nobias"],
)
def test_hf_model_reproduces_our_logits(tmp_path, tokenizer_path, overrides, hf_class):
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=320, **overrides)).eval()
    with torch.no_grad():  # random norms and biases, so a mis-mapped tensor cannot hide behind init values
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    out = export_hf(model, tokenizer_path, tmp_path / "hf")
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    hf.eval()
    assert type(hf).__name__ == hf_class
    assert not info["missing_keys"] and not info["unexpected_keys"]
    idx = torch.randint(0, 320, (2, 64))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_tokenizer_loads_as_fast_with_special_tokens(tmp_path, tokenizer_path):
    out = export_hf(GPT(tiny(vocab_size=320)), tokenizer_path, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.is_fast
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.decode(tok("the cat sat")["input_ids"]) == "the cat sat"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == 0 and config["pad_token_id"] == 1


def test_export_rejects_a_tokenizer_larger_than_the_model(tmp_path, tokenizer_path):
    with pytest.raises(ValueError, match="vocab_size"):
        export_hf(GPT(tiny(vocab_size=100)), tokenizer_path, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def _memorize(model: GPT, ids: list[int], steps: int = 60) -> GPT:
    """Train ``model`` on one sequence until greedy decoding reproduces it (a model that answers and stops)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    for _ in range(steps):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_chat_export_generates_the_same_greedy_reply_as_lmcore(tmp_path, tokenizer_path):
    from lmcore.data.tokenizer import load_tokenizer
    from lmcore.finetune.chat import prompt_ids
    from lmcore.finetune.sft import chat_generate
    from lmcore.model.generate import greedy

    tok = load_tokenizer(tokenizer_path)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "where did the cat sit?"}]
    prompt = prompt_ids(messages, tok)
    answer = tok.encode("on the mat.").ids
    torch.manual_seed(0)
    model = _memorize(GPT(tiny(vocab_size=320, context_length=64)), prompt + answer + [tok.im_end_id])
    ours = chat_generate(model, tok, messages, greedy(), max_new_tokens=20)
    assert ours == "on the mat.", "the model stops at <|im_end|> before max_new_tokens, so stopping is compared too"

    out = export_hf(model, tokenizer_path, tmp_path / "hf", end_token="<|im_end|>")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = hf_tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == prompt, "the chat template tokenizes to lmcore's ChatML prompt ids"
    with torch.no_grad():
        gen = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
    new = gen[0, ids.size(1) :].tolist()
    assert new[-1] == tok.im_end_id, "generation_config's eos_token_id <|im_end|> ends the reply"
    assert hf_tok.decode(new[:-1], skip_special_tokens=False) == ours


def test_chat_export_ends_at_im_end(tmp_path, tokenizer_path):
    out = export_hf(GPT(tiny(vocab_size=320)), tokenizer_path, tmp_path / "hf", end_token="<|im_end|>")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    generation = transformers.GenerationConfig.from_pretrained(out)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert generation.eos_token_id == im_end == json.loads((out / "config.json").read_text())["eos_token_id"]
    assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|endoftext|>"
    base = export_hf(GPT(tiny(vocab_size=320)), tokenizer_path, tmp_path / "base")
    assert transformers.GenerationConfig.from_pretrained(base).eos_token_id == tok.convert_tokens_to_ids(
        "<|endoftext|>"
    )
    with pytest.raises(ValueError, match="end_token"):
        export_hf(GPT(tiny(vocab_size=320)), tokenizer_path, tmp_path / "bad", end_token="<|pad|>")
