"""Task ``classify``: ``lmcore.finetune.classify.evaluate_all`` on the labeled_data artifact.

Spec keys: ``init_checkpoint`` (directory), ``config`` (ClassifyConfig fields), ``labeled``
(``{"train", "validation", "test"}``: the artifact's JSONL files of ``{"text", "label"}``),
``tokenizer`` (``tokenizer.json``), ``runs_dir``, and optionally ``outlets``
(``lmcore.train.job.Outlets`` fields) and ``shard_root`` (the token_shards directory: the
``encoder`` method pretrains on it). The result is None on ranks other than 0.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assets.tasks import check_keys
from lmcore.data.tokenizer import load_tokenizer
from lmcore.finetune.classify import ClassifyConfig, evaluate_all
from lmcore.finetune.prompts import Labeled
from lmcore.train.config import TrainConfig
from lmcore.train.job import Outlets

KEYS = {"init_checkpoint", "config", "labeled", "tokenizer", "runs_dir"}
PARTS = ("train", "validation", "test")


def train_configs(spec: dict[str, Any]) -> dict[str, TrainConfig]:
    cfg = ClassifyConfig.from_dict(spec["config"])
    runs = {"label_lm": cfg.label_lm, "head": cfg.head, "adapt": cfg.adapt}
    if "encoder" in cfg.methods:
        runs |= {"encoder_pretrain": cfg.encoder_pretrain, "encoder": cfg.encoder}
    return {name: run for name, run in runs.items() if run is not None}


def read_labeled(path: str | Path) -> Labeled:
    """``(texts, labels)`` of one JSONL part of the labeled_data artifact."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def run(
    spec: dict[str, Any],
    *,
    callback: Callable[[dict[str, Any]], None] | None = None,
    on_wait: Callable[[Path], None] | None = None,
    where: str | Path = "classify spec",
) -> dict[str, Any] | None:
    """``evaluate_all``'s results (``callback`` gets its events; ``on_wait`` is unused)."""
    check_keys(spec, KEYS, {"outlets", "shard_root"}, where)
    if sorted(spec["labeled"]) != sorted(PARTS):
        raise ValueError(f"{where}: labeled must name the files {list(PARTS)}, got {sorted(spec['labeled'])}")
    return evaluate_all(
        Path(spec["init_checkpoint"]),
        load_tokenizer(spec["tokenizer"]),
        *(read_labeled(spec["labeled"][part]) for part in PARTS),
        Path(spec["runs_dir"]),
        ClassifyConfig.from_dict(spec["config"]),
        callback=callback,
        outlets=Outlets.from_dict(spec.get("outlets")),
        shard_root=Path(spec["shard_root"]) if spec.get("shard_root") else None,
    )
