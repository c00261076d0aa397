"""Start from a published model: ``hf:<hub id or local directory>`` made into lmcore's tokenizer and checkpoint.

:func:`prepare_base` resolves the source (a directory in the hub's layout as it is, a hub id through
``huggingface_hub.snapshot_download`` and its normal cache), reads its weights with
:func:`lmcore.model.hf_import.load_hf`, adopts its ``tokenizer.json`` with the ChatML and padding tokens
lmcore needs added when the model lacks them (:data:`lmcore.data.tokenizer.SPECIAL_TOKENS`), grows the embeddings
to match, and writes ``tokenizer.json`` and a step-0 checkpoint that pretraining continues from. What it records
(source, resolved revision, the source weights' digest, the tokens added, the model's own chat template) is the
lineage of everything trained from it. This module knows nothing of Dagster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from lmcore.data.tokenizer import SPECIAL_TOKENS
from lmcore.io import atomic_path, sha256_file
from lmcore.model.checkpoint import checkpoint_dir, save_checkpoint
from lmcore.model.gpt import GPT
from lmcore.model.hf_import import WEIGHTS, load_hf, read_hf_config

HF_PREFIX = "hf:"
HUB_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
"""What is fetched of a hub repository: the config, the safetensors weights and the fast tokenizer."""
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_DIR = "checkpoint"


@dataclass(kw_only=True, frozen=True)
class BaseModelConfig:
    """The published model a run starts from, if any."""

    source: str = ""
    """``""``: none (the tokenizer is trained, pretraining starts from new weights); ``hf:<hub id or directory>``:
    a transformers checkpoint (GPT-2, Llama or Qwen2: ``config.json``, safetensors weights, ``tokenizer.json``).
    Its tokenizer replaces the trained one and pretraining continues from its weights. A relative directory is
    resolved against the project root; a hub id (``openai-community/gpt2``) is downloaded once into the Hugging Face
    cache (``HF_HOME``), which needs the network unless the cache holds it (``HF_HUB_OFFLINE=1``)."""
    revision: str | None = None
    """With a hub id: the branch, tag or commit to use (None: ``main``); the commit it resolves to is recorded.
    Not with a directory."""

    def __post_init__(self) -> None:
        if self.source and not self.source.startswith(HF_PREFIX):
            raise ValueError(
                f"base_model.source={self.source!r}: write hf:<hub id or directory>, e.g. hf:openai-community/gpt2 "
                "or hf:/models/gpt2 (or leave it empty to train from new weights)"
            )
        if self.source == HF_PREFIX:
            raise ValueError("base_model.source='hf:' names no model: write hf:<hub id or directory>")
        if self.revision is not None and not self.source:
            raise ValueError(f"base_model.revision={self.revision!r} without a source: set base_model.source too")

    @property
    def name(self) -> str:
        """The hub id or directory, as written."""
        return self.source[len(HF_PREFIX) :]


def resolve_source(cfg: BaseModelConfig, root: Path) -> tuple[Path, str | None]:
    """The local directory of ``cfg.source`` and the commit it resolved to (None for a directory)."""
    local = Path(cfg.name).expanduser()
    local = local if local.is_absolute() else root / local
    if local.is_dir():
        if cfg.revision is not None:
            raise ValueError(
                f"base_model.revision={cfg.revision!r} with the directory {local}: a directory has one revision; "
                "remove base_model.revision"
            )
        return local, None
    if cfg.name.startswith((".", "/", "~")) or cfg.name.count("/") > 1:
        raise FileNotFoundError(f"base_model.source={cfg.source!r}: {local} is not a directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ImportError(f"base_model.source={cfg.source!r} is a hub id: pip install 'lmpipe[hf]'") from exc
    try:
        directory = Path(snapshot_download(cfg.name, revision=cfg.revision, allow_patterns=list(HUB_FILES)))
    except Exception as exc:  # huggingface_hub's own errors: offline, not found, gated, no such revision
        raise FileNotFoundError(
            f"base_model.source={cfg.source!r} (revision {cfg.revision or 'main'}): {type(exc).__name__}: {exc}. "
            "Check the hub id and revision, the network (HF_HUB_OFFLINE), or give a local directory"
        ) from exc
    return directory, directory.name  # the cache's snapshots/<commit>


def weights_digest(directory: Path) -> str:
    """sha256 over the names and sha256 of the directory's weight files (and their index), in name order."""
    files = sorted(p for p in directory.iterdir() if p.name in WEIGHTS or p.name.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no weights; expected one of {list(WEIGHTS)}")
    listing = "".join(f"{p.name} {sha256_file(p)}\n" for p in files)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def adopt_tokenizer(directory: Path) -> tuple[HFTokenizer, list[str]]:
    """The model's ``tokenizer.json`` with each of lmcore's special tokens it lacks added (after its vocabulary),
    and the tokens added."""
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no tokenizer.json (the fast tokenizer's file); save one beside the weights with "
            "AutoTokenizer.from_pretrained(dir).save_pretrained(dir)"
        )
    tok = HFTokenizer.from_file(str(path))
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return tok, missing


def chat_template(directory: Path) -> str | None:
    """The model's own chat template (``tokenizer_config.json``'s, or ``chat_template.jinja``), if it has one."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = directory / "tokenizer_config.json"
    template = json.loads(config.read_text(encoding="utf-8")).get("chat_template") if config.is_file() else None
    return template if isinstance(template, str) else None


def grow_vocab(model: GPT, vocab_size: int) -> GPT:
    """``model`` with ``vocab_size`` rows of embeddings (and output head), the new rows the mean of the old ones."""
    old = model.config.vocab_size
    if vocab_size == old:
        return model
    if vocab_size < old:
        raise ValueError(f"cannot shrink a vocabulary of {old} to {vocab_size}")
    grown = GPT(dataclasses.replace(model.config, vocab_size=vocab_size))
    state = model.state_dict()
    for name in ("transformer.wte.weight", "lm_head.weight"):
        rows = state[name]
        state[name] = torch.cat([rows, rows.mean(0, keepdim=True).expand(vocab_size - old, -1)])
    grown.load_state_dict(state)
    return grown


def load_published(directory: Path) -> tuple[GPT, HFTokenizer, list[str]]:
    """A transformers checkpoint directory's model and adopted tokenizer (:func:`adopt_tokenizer`), the embeddings
    grown to the tokenizer, and the tokens added; ValueError when the tokenizer is not the model's."""
    tok, added = adopt_tokenizer(directory)
    model = load_hf(directory)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > model.config.vocab_size + len(added):
        raise ValueError(
            f"{directory / TOKENIZER_FILE} has {size - len(added)} tokens but {directory / 'config.json'} a "
            f"vocabulary of {model.config.vocab_size}: they do not belong together"
        )
    return grow_vocab(model, max(model.config.vocab_size, size)), tok, added


def base_checkpoint(out: Path) -> Path:
    """The step-0 checkpoint :func:`prepare_base` writes under ``out``."""
    return checkpoint_dir(out / CHECKPOINT_DIR, 0)


def prepare_base(cfg: BaseModelConfig, root: Path, out: Path) -> dict[str, Any]:
    """Write ``out/tokenizer.json`` and the step-0 checkpoint under ``out/checkpoint`` for ``cfg``; its lineage."""
    directory, revision = resolve_source(cfg, root)
    hf_config = read_hf_config(directory)
    model, tok, added = load_published(directory)
    with atomic_path(out / TOKENIZER_FILE) as tmp:
        tok.save(str(tmp), pretty=False)
    lineage = {
        "source": cfg.source,
        "revision": revision,
        "weights_sha256": weights_digest(directory),
        "architecture": hf_config.get("architectures", [None])[0],
        "added_tokens": added,
        "vocab_size": model.config.vocab_size,
        "chat_template": chat_template(directory),
    }
    meta = {"config": {"model": model.config.to_dict()}, "base_model": lineage}
    save_checkpoint(out / CHECKPOINT_DIR, 0, model, {}, meta, keep=1)
    return lineage
