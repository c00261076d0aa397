"""``lmpipe generate``, ``lmpipe chat`` and ``lmpipe export``: pick a trained model and use it.

``--model`` says which model:

- ``pretrained``: the latest ``pretrained_model`` in the artifact store, with the tokenizer it was trained with;
- ``sft``: the latest ``sft_model`` (the chat model), likewise;
- a directory: a checkpoint (``model.safetensors`` + ``meta.json``, as training writes them; its tokenizer is the
  ``tokenizer.json`` beside them, else the one its meta.json names, else the store's latest) or a Hugging Face
  model directory (``config.json``, the weights and ``tokenizer.json``, as ``hf_export`` writes it).

A store model is opened through the artifact store as the assets open it (fetched when the store is remote,
every digest verified), and a tokenizer other than the one the model was trained with is refused. The decoding is
``lmcore``'s (:mod:`lmcore.model.generate`, :mod:`lmcore.finetune.converse`); this module reads flags, stdin and
the store, and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from assets.resources import ArtifactStore
    from lmcore.data.tokenizer import Tokenizer
    from lmcore.finetune.converse import Conversation
    from lmcore.model.gpt import GPT

STORE_MODELS = {"pretrained": "pretrained_model", "sft": "sft_model"}
"""``--model`` names of the store's models, and their assets."""
MODEL_HELP = (
    "pretrained (the latest pretrained_model), sft (the latest sft_model), or a directory: a checkpoint "
    "(model.safetensors + meta.json) or a Hugging Face model (config.json + tokenizer.json)"
)
INTERRUPTED = 130
"""The exit code when Ctrl-C ends a chat (the shell's 128 + SIGINT)."""
C = TypeVar("C")


@dataclass(frozen=True)
class UsableModel:
    """A model ready to generate with, and where it came from."""

    model: GPT
    tokenizer: Tokenizer
    tokenizer_file: Path | None
    """The ``tokenizer.json`` it was trained with (what an export copies); None: ``tokenizer`` has tokens added
    that no file holds."""
    chat: bool
    """Fine-tuned on ChatML conversations: its replies end at ``<|im_end|>`` (and so does its export)."""
    source: str
    """Which model this is, for messages."""
    chat_template: str | None = None
    """The chat template an export keeps (a base model's own); None: ChatML."""


def resolve_model(spec: str) -> UsableModel:
    """The model ``--model spec`` names; FileNotFoundError or ValueError naming what to change."""
    if spec in STORE_MODELS:
        return _from_store(STORE_MODELS[spec])
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {spec}: no such directory; give {MODEL_HELP}")
    if (path / "meta.json").is_file():
        return _from_checkpoint(path)
    if (path / "config.json").is_file():
        return _from_hf(path)
    raise FileNotFoundError(
        f"--model {spec}: the directory has neither meta.json (a checkpoint) nor config.json (a Hugging Face "
        f"model); give {MODEL_HELP}"
    )


@contextlib.contextmanager
def _store() -> Iterator[ArtifactStore]:
    """The artifact store the assets use (``pipelines.definitions``), as a resource."""
    import dagster as dg

    from pipelines.definitions import artifact_store

    with dg.build_resources({"store": artifact_store()}) as resources:
        yield resources.store


def _from_store(asset: str) -> UsableModel:
    from assets.artifacts import Checkpoint, TokenizerFile

    with _store() as store:
        try:
            checkpoint = Checkpoint.open(store, store.read_ref(asset))
            tokenizer = TokenizerFile.open(store, store.read_ref("tokenizer"))
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"{exc} (`lmpipe run` materializes every asset, `lmpipe run --select '*{asset}'` {asset} and "
                "what it needs)"
            ) from None
    if tokenizer.sha256 != (trained := checkpoint.manifest["tokenizer_sha256"]):
        raise ValueError(
            f"the latest tokenizer ({tokenizer.location}, sha256 {tokenizer.sha256[:12]}) is not the one the latest "
            f"{asset} was trained with (sha256 {trained[:12]}); materialize {asset} again (`lmpipe run --stale`)"
        )
    model, template = checkpoint.load(), tokenizer.manifest.get("chat_template")  # a base model's own, kept
    source = f"{asset} {checkpoint.location}"
    return UsableModel(model, tokenizer.tokenizer, tokenizer.file, asset == "sft_model", source, template)


def _from_checkpoint(path: Path) -> UsableModel:
    from lmcore.data.tokenizer import load_tokenizer
    from lmcore.model.checkpoint import load_trained_model, read_meta

    try:
        meta = read_meta(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path / 'meta.json'} is not valid JSON ({exc}); the checkpoint is damaged") from None
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    if "head" in config:
        raise ValueError(
            f"{path} is a classifier checkpoint (meta.json config.head); --model takes a language model: {MODEL_HELP}"
        )
    if "model" not in config:
        raise ValueError(f"{path / 'meta.json'} has no config.model: not a checkpoint lmpipe's training wrote")
    tokenizer_file = _checkpoint_tokenizer(path, meta)
    model, _ = load_trained_model(path)  # verifies every file against meta.json
    # lmcore.finetune.sft.finetune (SFT, label LM) records its examples: the model answers in ChatML
    chat = "train_examples" in (meta.get("data") or {})
    return UsableModel(model, load_tokenizer(tokenizer_file), tokenizer_file, chat, str(path))


def _checkpoint_tokenizer(path: Path, meta: dict[str, Any]) -> Path:
    """The tokenizer.json of a checkpoint directory, checked against the digest its meta.json records."""
    from lmcore.io import sha256_file

    recorded = meta.get("tokenizer_sha256")
    candidates = [path / "tokenizer.json"] + ([Path(meta["tokenizer_path"])] if meta.get("tokenizer_path") else [])
    found = next((c for c in candidates if c.is_file()), None)
    if found is None and recorded is None:
        raise FileNotFoundError(
            f"{path}: no tokenizer.json beside the weights, and meta.json records no tokenizer; copy the "
            f"tokenizer.json the model was trained with into {path}"
        )
    if found is None:
        found = _store_tokenizer()
    if recorded is not None and (digest := sha256_file(found)) != recorded:
        raise ValueError(
            f"{found} (sha256 {digest[:12]}) is not the tokenizer {path} was trained with (sha256 {recorded[:12]} "
            f"in its meta.json); copy that tokenizer.json into {path}"
        )
    return found


def _store_tokenizer() -> Path:
    from assets.artifacts import TokenizerFile

    with _store() as store:
        return TokenizerFile.open(store, store.read_ref("tokenizer")).file


def _from_hf(path: Path) -> UsableModel:
    """A Hugging Face model directory; a tokenizer without lmcore's special tokens (a published base model's) gets
    them added, and the embeddings grow to match, as the ``base_model`` asset does."""
    from lmcore.data.tokenizer import Tokenizer
    from lmcore.model.base_model import chat_template, load_published

    model, hf_tokenizer, added = load_published(path)
    tokenizer, model = Tokenizer(hf_tokenizer), model.eval()
    if added:
        print(f"lmpipe: {path} lacks {added}: added to its tokenizer, as the base_model asset does", file=sys.stderr)
    ends = {json.loads((path / name).read_text()).get("eos_token_id") for name in _CONFIGS if (path / name).is_file()}
    chat = not added and tokenizer.im_end_id in ends
    return UsableModel(
        model, tokenizer, None if added else path / "tokenizer.json", chat, str(path), chat_template(path)
    )


_CONFIGS = ("generation_config.json", "config.json")


def config_from(cls: type[C], args: argparse.Namespace) -> C:
    """``cls`` (a config dataclass) from the flags of its fields (``pipelines.cli``'s ``_config_flags``)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


def generate_command(args: argparse.Namespace) -> int:
    from lmcore.model.generate import GenerationConfig, generate_text

    try:
        decoding = config_from(GenerationConfig, args)
        used = resolve_model(args.model)
    except (FileNotFoundError, ValueError) as exc:
        print(f"lmpipe generate: error: {exc}", file=sys.stderr)
        return 2
    text = generate_text(used.model, used.tokenizer, args.prompt, decoding, max_new_tokens=args.max_new_tokens)
    print(args.prompt + text)
    return 0


def export_command(args: argparse.Namespace) -> int:
    import tempfile

    from lmcore.model.export import EOT, IM_END, export_hf

    try:
        used = resolve_model(args.model)
        end = IM_END if used.chat else EOT
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer_file = used.tokenizer_file or Path(tmp) / "tokenizer.json"
            if used.tokenizer_file is None:  # tokens were added: the export carries the grown tokenizer
                used.tokenizer.hf.save(str(tokenizer_file))
            out = export_hf(
                used.model, tokenizer_file, Path(args.out_dir), end_token=end, chat_template=used.chat_template
            )
    except (FileNotFoundError, ValueError) as exc:
        print(f"lmpipe export: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    print(f"exported {used.source}; generation ends at {end}", file=sys.stderr)
    return 0


def chat_command(args: argparse.Namespace) -> int:
    from lmcore.finetune.converse import ChatConfig, Conversation
    from lmcore.model.generate import GenerationConfig

    try:
        decoding, config = config_from(GenerationConfig, args), config_from(ChatConfig, args)
        used = resolve_model(args.model)
        conversation = Conversation(used.model, used.tokenizer, config, decoding)
    except (FileNotFoundError, ValueError) as exc:
        print(f"lmpipe chat: error: {exc}", file=sys.stderr)
        return 2
    if not used.chat:
        print(
            f"lmpipe chat: note: {used.source} was not fine-tuned on conversations; its replies may not end "
            "where a reply should (the chat model is --model sft)",
            file=sys.stderr,
        )
    try:
        converse(conversation, interactive=sys.stdin.isatty(), source=used.source)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return INTERRUPTED
    return 0


def converse(conversation: Conversation, *, interactive: bool, source: str) -> None:
    """Read user turns from stdin, one a line, and print each reply, until EOF, an empty line or ``/exit``.

    In a terminal each turn is prompted (``you> ``, with line editing) and each reply marked ``assistant> ``; from
    a pipe each reply is printed alone. A message too long for the context is refused and the chat goes on.
    """
    if interactive:
        with contextlib.suppress(ImportError):  # input() then edits the line and recalls earlier ones
            import readline  # noqa: F401
        print(f"chatting with {source}; an empty line, /exit or Ctrl-D ends", file=sys.stderr)
    while True:
        if interactive:
            try:
                line = input("you> ")
            except EOFError:
                print(file=sys.stderr)
                return
        elif not (line := sys.stdin.readline()):
            return
        text = line.strip()
        if not text or text == "/exit":
            return
        before = conversation.dropped
        try:
            reply = conversation.reply(text)
        except ValueError as exc:
            print(f"lmpipe chat: {exc}", file=sys.stderr)
            continue
        if dropped := conversation.dropped - before:
            print(
                f"lmpipe chat: dropped the oldest {dropped} exchange(s) to fit the model's context of "
                f"{conversation.model.config.context_length} tokens ({conversation.dropped} so far; the system "
                "message is kept)",
                file=sys.stderr,
            )
        print(f"assistant> {reply}" if interactive else reply, flush=True)


COMMANDS = {"generate": generate_command, "chat": chat_command, "export": export_command}
"""What each model-using ``lmpipe`` command runs."""
