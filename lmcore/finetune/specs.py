"""The fine-tuning tasks as training specs (:mod:`lmcore.train.spec`): :class:`SftSpec` and :class:`ClassifySpec`.

Each holds its configs, the paths of its inputs on disk (never the data: every process of a torchrun
job reads them itself) and its run directory; ``run()`` reads the inputs and makes the one lmcore call.
This module knows nothing of Dagster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lmcore.data.tokenizer import load_tokenizer
from lmcore.finetune.classify import ClassifyConfig, ClassifyRun, evaluate_all
from lmcore.finetune.prompts import Labeled
from lmcore.finetune.sft import FinetuneRun, finetune
from lmcore.finetune.sft_data import read_sft_dataset
from lmcore.model.lora import LoraConfig
from lmcore.train.config import TrainConfig
from lmcore.train.job import Callback, Outlets
from lmcore.train.spec import OnWait, SummaryResult, check_keys
from lmcore.train.summary import TrainSummary

PARTS = ("train", "validation", "test")
"""The parts of a labeled data set, each a JSONL file of ``{"text", "label"}``."""


@dataclass(frozen=True, kw_only=True)
class SftSpec(FinetuneRun, SummaryResult):
    """Chat fine-tuning (:func:`lmcore.finetune.sft.finetune`) from a pretrained checkpoint on an SFT data set:
    the run (:class:`~lmcore.finetune.sft.FinetuneRun`) and the paths of its inputs.

    The first half of the held-out examples validates; the rest is left for the evaluation's ROUGE set.
    """

    task: ClassVar[str] = "sft"
    sft_dataset: Path
    """The directory ``lmcore.finetune.sft_data.read_sft_dataset`` reads."""
    tokenizer: Path
    """``tokenizer.json`` (its pad id pads the batches)."""

    def train_configs(self) -> dict[str, TrainConfig]:
        return {"train": self.train}

    def run(self, *, callback: Callback | None = None, on_wait: OnWait | None = None) -> TrainSummary:
        """``finetune``'s summary (``on_wait`` is unused: fine-tuning does not report waiting)."""
        examples, heldout, _ = read_sft_dataset(self.sft_dataset)
        validation = heldout[: max(1, len(heldout) // 2)]
        return finetune(self, examples, validation, pad_id=load_tokenizer(self.tokenizer).pad_id, callback=callback)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "init_checkpoint": str(self.init_checkpoint),
            "train": self.train.to_dict(),
            "lora": self.lora.to_dict() if self.lora is not None else None,
            "sft_dataset": str(self.sft_dataset),
            "tokenizer": str(self.tokenizer),
            "runs_dir": str(self.runs_dir),
            "meta_extra": self.meta_extra,
            "outlets": self.outlets.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str | Path = "sft spec") -> SftSpec:
        check_keys(cls, d, where)
        return cls(
            init_checkpoint=Path(d["init_checkpoint"]),
            train=TrainConfig.from_dict(d["train"]),
            lora=LoraConfig.from_dict(d["lora"]) if d.get("lora") else None,
            sft_dataset=Path(d["sft_dataset"]),
            tokenizer=Path(d["tokenizer"]),
            runs_dir=Path(d["runs_dir"]),
            meta_extra=d.get("meta_extra"),
            outlets=Outlets.from_dict(d.get("outlets")),
        )


def read_labeled(path: str | Path) -> Labeled:
    """``(texts, labels)`` of one JSONL part of a labeled data set."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    return [r["text"] for r in rows], [r["label"] for r in rows]


@dataclass(frozen=True, kw_only=True)
class ClassifySpec(ClassifyRun):
    """The classifiers (:func:`lmcore.finetune.classify.evaluate_all`) trained from a pretrained checkpoint and
    scored on one test split: the run (:class:`~lmcore.finetune.classify.ClassifyRun`) and the paths of its
    labeled data and tokenizer. The result is ``evaluate_all``'s dict (None on ranks other than 0)."""

    task: ClassVar[str] = "classify"
    labeled: dict[str, Path]
    """The JSONL file of each of :data:`PARTS`."""
    tokenizer: Path

    def __post_init__(self) -> None:
        super().__post_init__()
        if sorted(self.labeled) != sorted(PARTS):
            raise ValueError(f"labeled must name the files {list(PARTS)}, got {sorted(self.labeled)}")

    def train_configs(self) -> dict[str, TrainConfig]:
        cfg = self.config
        runs = {"label_lm": cfg.label_lm, "head": cfg.head, "adapt": cfg.adapt}
        if "encoder" in cfg.methods:
            runs |= {"encoder_pretrain": cfg.encoder_pretrain, "encoder": cfg.encoder}
        return {name: run for name, run in runs.items() if run is not None}

    def run(self, *, callback: Callback | None = None, on_wait: OnWait | None = None) -> dict[str, Any] | None:
        """``evaluate_all``'s results (``callback`` gets its events; ``on_wait`` is unused)."""
        parts = (read_labeled(self.labeled[part]) for part in PARTS)
        return evaluate_all(self, load_tokenizer(self.tokenizer), *parts, callback=callback)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "init_checkpoint": str(self.init_checkpoint),
            "config": self.config.to_dict(),
            "labeled": {part: str(path) for part, path in self.labeled.items()},
            "tokenizer": str(self.tokenizer),
            "runs_dir": str(self.runs_dir),
            "outlets": self.outlets.to_dict(),
            "shard_root": str(self.shard_root) if self.shard_root is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str | Path = "classify spec") -> ClassifySpec:
        check_keys(cls, d, where)
        return cls(
            init_checkpoint=Path(d["init_checkpoint"]),
            config=ClassifyConfig.from_dict(d["config"]),
            labeled={part: Path(path) for part, path in d["labeled"].items()},
            tokenizer=Path(d["tokenizer"]),
            runs_dir=Path(d["runs_dir"]),
            outlets=Outlets.from_dict(d.get("outlets")),
            shard_root=Path(d["shard_root"]) if d.get("shard_root") else None,
        )

    def result_to_dict(self, result: dict[str, Any] | None) -> dict[str, Any] | None:
        return result

    def result_from_dict(self, data: dict[str, Any] | None) -> dict[str, Any] | None:
        return data
