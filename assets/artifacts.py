"""Typed handles to published artifacts: what assets hand each other instead of dicts of paths.

A handle knows where its artifact is in the store (``location``), its data version (the
digest Dagster records) and a local directory holding it (fetched from object storage when
needed), and reads it through lmcore: ``TokenShards.split("train")``, ``TokenizerFile.load()``,
``Checkpoint.load()``. The IO manager (``assets.io_manager.ArtifactIOManager``) stores a
handle's :meth:`Artifact.ref` in the artifact store and opens it again for downstream assets,
so nothing is pickled and any machine pointed at the same store can read it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from assets.resources import ArtifactStore
from lmcore.data.shards import SplitTokens, open_split
from lmcore.data.splits import split_index, split_rows, split_texts
from lmcore.data.tokenizer import Tokenizer, load_tokenizer
from lmcore.finetune.sft_data import SFTExample, read_sft_dataset
from lmcore.io import read_json, write_json
from lmcore.model.base_model import base_checkpoint
from lmcore.model.checkpoint import META_FILE, MODEL_FILE, load_trained_model
from lmcore.model.gpt import GPT, ModelConfig
from lmcore.publish import verify_dir, verify_file
from lmcore.train.summary import TrainSummary

MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
A = TypeVar("A", bound="Artifact")


@dataclass(frozen=True)
class Artifact:
    """A published artifact: its store location, data version and local directory."""

    location: str
    data_version: str
    path: Path
    memo: str = ""
    """For a partition's artifact: the digest of what it was built from, so an unchanged partition is reused."""
    kinds: ClassVar[dict[str, type[Artifact]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        Artifact.kinds[cls.__name__] = cls

    @functools.cached_property
    def manifest(self) -> dict[str, Any]:
        return read_json(self.path / MANIFEST)

    def ref(self) -> dict[str, str]:
        """What the IO manager stores: enough to open the handle again on any machine."""
        ref = {"kind": type(self).__name__, "location": self.location, "data_version": self.data_version}
        return ref | ({"memo": self.memo} if self.memo else {})

    @classmethod
    def open(cls: type[A], store: ArtifactStore, ref: dict[str, str]) -> A:
        """The handle of a stored reference, with a local copy of the artifact (fetched if remote)."""
        path = store.local_path(ref["location"])
        verify_dir(path)  # every file as it was published: a damaged one is named, not read
        return cls(location=ref["location"], data_version=ref["data_version"], path=path, memo=ref.get("memo", ""))

    @classmethod
    def publish(cls: type[A], store: ArtifactStore, asset: str, build: Callable[[Path], Any]) -> A:
        """Call ``build(staging_dir)`` (it writes the manifest last), publish the directory, return its handle."""
        with store.stage(asset) as staging:
            build(staging)
            location, version = store.publish(staging, asset)
        return cls(location=location, data_version=version, path=store.local_path(location))


def open_ref(store: ArtifactStore, ref: dict[str, str]) -> Artifact:
    """The handle a :meth:`Artifact.ref` describes, with a local copy of its artifact."""
    kind = Artifact.kinds.get(ref.get("kind", ""))
    if kind is None:
        raise ValueError(f"artifact reference {json.dumps(ref)} has an unknown kind; re-materialize that asset")
    return kind.open(store, ref)


class Documents(Artifact):
    """raw_corpus / clean_corpus: Parquet shards of documents (doc_id, source, text, ...)."""

    @property
    def shard_paths(self) -> list[Path]:
        return [self.path / s["path"] for s in self.manifest["shards"]]


class Splits(Artifact):
    """splits: the deduplicated documents of every partition with their train/val/test split (an index over the
    cleaned shards, which it links)."""

    def rows(self, split: str, ids: set[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every column of the cleaned rows of ``split`` (with ``ids``: only those documents)."""
        return split_rows(self.path, self.manifest, split, ids=ids)

    def texts(self, split: str, ids: set[str] | None = None) -> Iterator[str]:
        return split_texts(self.path, self.manifest, split, ids=ids)

    def index(self, partition: str | None = None) -> Any:
        """The Arrow index (partition, doc_id, spec, bytes, split, reason), or one partition's rows."""
        return split_index(self.path, partition)


class TokenizerFile(Artifact):
    """tokenizer: an HF ``tokenizer.json`` with the special tokens first."""

    @property
    def file(self) -> Path:
        return self.path / TOKENIZER_FILE

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.file)


class BaseModel(Artifact):
    """base_model: the published model a run starts from (its adopted tokenizer and a step-0 checkpoint), or none."""

    @property
    def lineage(self) -> dict[str, Any] | None:
        """Source, resolved revision, source weights' digest, tokens added, chat template; None: no base model."""
        return self.manifest["base_model"]

    @property
    def tokenizer_file(self) -> Path:
        return self.path / TOKENIZER_FILE

    @property
    def checkpoint(self) -> Path:
        return base_checkpoint(self.path)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(read_json(self.checkpoint / META_FILE)["config"]["model"])


class TokenShards(Artifact):
    """token_shards: Arrow IPC token ids per split, manifest with counts and digests."""

    def split(self, name: str) -> SplitTokens:
        return open_split(self.path, name)

    @property
    def vocab_size(self) -> int:
        return self.manifest["vocab_size"]


class Checkpoint(Artifact):
    """A trained model's final checkpoint (``model.safetensors`` + ``meta.json``).

    ``location`` is the checkpoint's URL in the store's run mirror when the store has one
    (``ArtifactStore.run_mirror``), so any machine with the same store can open it; else the
    local path in the run directory, and opening it on another machine fails naming it.
    """

    @classmethod
    def open(cls, store: ArtifactStore, ref: dict[str, str]) -> Checkpoint:
        path = store.fetch_checkpoint(ref["location"])
        if read_json(path / META_FILE)["files"][MODEL_FILE] != ref["data_version"]:
            raise ValueError(f"{ref['location']} holds other weights than the recorded version; re-materialize it")
        verify_file(path / MODEL_FILE, ref["data_version"], "re-materialize the training asset that wrote it")
        return cls(location=ref["location"], data_version=ref["data_version"], path=path)

    @classmethod
    def of_run(cls, summary: TrainSummary) -> Checkpoint:
        """The final checkpoint of a training summary (``lmcore.train.loop.run_job``'s); the weights digest is its
        data version."""
        assert summary.checkpoint_sha256 is not None  # rank 0's summary: its checkpoint is on this machine
        location = summary.checkpoint_url or str(summary.checkpoint)
        return cls(location=location, data_version=summary.checkpoint_sha256, path=summary.checkpoint)

    @functools.cached_property
    def manifest(self) -> dict[str, Any]:
        return read_json(self.path / META_FILE)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.manifest["config"]["model"])

    def load(self, device: str = "cpu") -> GPT:
        return load_trained_model(self.path, device)[0]


class SftData(Artifact):
    """sft_dataset: rendered ChatML training examples and held-out prompts."""

    def read(self) -> tuple[list[SFTExample], list[SFTExample], dict[str, Any]]:
        return read_sft_dataset(self.path)


class LabeledData(Artifact):
    """labeled_data: {text, label} JSONL for train, validation and test."""

    PARTS: ClassVar[tuple[str, ...]] = ("train", "validation", "test")

    def part(self, name: str) -> tuple[list[str], list[str]]:
        rows = [json.loads(line) for line in (self.path / f"{name}.jsonl").read_text().splitlines() if line]
        return [r["text"] for r in rows], [r["label"] for r in rows]


class Report(Artifact):
    """A report (perplexity, classifiers, evaluation): its figures are the manifest."""

    @classmethod
    def write(
        cls, store: ArtifactStore, asset: str, report: dict[str, Any], *, name: str | None = None, markdown: str = ""
    ) -> Report:
        """Publish ``report`` (and ``markdown``); with ``name``, also as ``$LMPIPE_HOME/reports/{name}.json|md``."""

        def build(out: Path) -> None:
            if markdown:
                (out / f"{name or asset}.md").write_text(markdown, encoding="utf-8")
            write_json(out / MANIFEST, report)

        published = cls.publish(store, asset, build)
        if name:
            write_json(store.reports_dir() / f"{name}.json", report)
            if markdown:
                (store.reports_dir() / f"{name}.md").write_text(markdown, encoding="utf-8")
        return published


class HfExport(Artifact):
    """hf_export: the pretrained and the SFT model in Hugging Face ``transformers`` format, one folder each."""

    MODELS: ClassVar[tuple[str, ...]] = ("pretrained", "sft")

    def model_dir(self, name: str) -> Path:
        """The folder ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load (``pretrained`` or ``sft``)."""
        if name not in self.MODELS:
            raise ValueError(f"hf_export has no model {name!r}; choose from {', '.join(self.MODELS)}")
        return self.path / name
