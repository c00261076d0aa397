"""Tiny published-model stand-ins for tests: transformers checkpoints in the Hugging Face hub's layout, saved offline.

``save_gpt2`` writes what ``openai-community/gpt2`` looks like (``<|endoftext|>`` its only special token, no chat
template); ``save_qwen2`` a chat model that has the ChatML tokens and its own template. ``cache_as_hub`` places a
directory in a Hugging Face cache as a downloaded hub repository, so the hub-id path runs offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

FIXTURES = Path(__file__).resolve().parent / "fixtures"
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer(specials: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = (FIXTURES / "small_corpus.txt").read_text(encoding="utf-8")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet)
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def save_gpt2(directory: Path, n_positions: int = 64, seed: int = 0) -> Path:
    """A GPT-2 of random weights with a byte-level BPE tokenizer whose only special token is ``<|endoftext|>``."""
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(["<|endoftext|>"], 400)
    tok.save(str(directory / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(seed)
    shape = dict(vocab_size=tok.get_vocab_size(), n_positions=n_positions, n_embd=32, n_layer=2, n_head=2)
    config = transformers.GPT2Config(**shape, bos_token_id=eot, eos_token_id=eot)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def save_qwen2(directory: Path, seed: int = 0) -> Path:
    """A Qwen2 of random weights whose tokenizer has the ChatML tokens and whose tokenizer_config has a template."""
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 400)
    tok.save(str(directory / "tokenizer.json"))
    config = {"chat_template": QWEN_TEMPLATE, "eos_token": "<|im_end|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    torch.manual_seed(seed)
    hf_config = transformers.Qwen2Config(
        vocab_size=tok.get_vocab_size() + 16,  # padded rows past the tokenizer, as the published Qwen2 models have
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    transformers.Qwen2ForCausalLM(hf_config).save_pretrained(directory)
    return directory


def cache_as_hub(directory: Path, cache: Path, repo_id: str, commit: str = "a" * 40) -> str:
    """Copy ``directory`` into the Hugging Face cache ``cache`` as ``repo_id`` at ``commit`` (``main`` points there)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(directory, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    return commit
