"""Task ``sft``: ``lmcore.finetune.sft.finetune`` from a pretrained checkpoint on the sft_dataset artifact.

Spec keys: ``init_checkpoint`` (directory), ``train`` (TrainConfig fields), ``lora`` (LoraConfig
fields or None), ``sft_dataset`` (the artifact's directory), ``tokenizer`` (``tokenizer.json``),
``runs_dir``, ``meta_extra``, optionally ``outlets`` (``lmcore.train.job.Outlets`` fields). The
first half of the held-out examples validates; the rest is evaluation_report's ROUGE set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from assets.tasks import check_keys
from lmcore.data.tokenizer import load_tokenizer
from lmcore.finetune.sft import finetune
from lmcore.finetune.sft_data import read_sft_dataset
from lmcore.model.lora import LoraConfig
from lmcore.train.config import TrainConfig
from lmcore.train.job import Outlets

KEYS = {"init_checkpoint", "train", "lora", "sft_dataset", "tokenizer", "runs_dir", "meta_extra"}


def train_configs(spec: dict[str, Any]) -> dict[str, TrainConfig]:
    return {"train": TrainConfig.from_dict(spec["train"])}


def run(
    spec: dict[str, Any],
    *,
    callback: Callable[[dict[str, Any]], None] | None = None,
    on_wait: Callable[[Path], None] | None = None,
    where: str | Path = "sft spec",
) -> dict[str, Any]:
    """``finetune``'s summary (``on_wait`` is unused: fine-tuning does not report waiting)."""
    check_keys(spec, KEYS, {"outlets"}, where)
    examples, heldout, _ = read_sft_dataset(spec["sft_dataset"])
    return finetune(
        Path(spec["init_checkpoint"]),
        TrainConfig.from_dict(spec["train"]),
        examples,
        heldout[: max(1, len(heldout) // 2)],
        Path(spec["runs_dir"]),
        pad_id=load_tokenizer(spec["tokenizer"]).pad_id,
        lora=LoraConfig.from_dict(spec["lora"]) if spec["lora"] else None,
        callback=callback,
        meta_extra=spec["meta_extra"],
        outlets=Outlets.from_dict(spec.get("outlets")),
    )
