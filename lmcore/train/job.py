"""What the training loop trains: a :class:`Job` (a model to build, where its batches come from).

Pretraining (``lmcore.train.loop``), SFT, task adaptation and the classifiers
(``lmcore.finetune``) each describe their run as a Job and hand it to the one loop.
``shard_job`` is pretraining's: a fresh GPT on token shards. This module knows nothing of Dagster or optimizers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from lmcore.data.loader import Mixture, TokenLoader
from lmcore.data.shards import MANIFEST, load_manifest
from lmcore.io import sha256_file
from lmcore.model.gpt import GPT, ModelConfig
from lmcore.train.config import TrainConfig
from lmcore.train.objectives import Objective, ObjectiveSource, check_model

Callback = Callable[[dict[str, Any]], None]
WINDOW_LOG_ENV = "LMPIPE_WINDOW_LOG_DIR"
"""A test aid (:func:`shard_job`): the directory where each rank logs the training windows it draws."""


@dataclass(frozen=True, kw_only=True)
class Outlets:
    """Where rank 0 sends a run's records and checkpoints besides its run directory.

    Plain values, so they travel in a torchrun spec (:meth:`to_dict` / :meth:`from_dict`).
    """

    tracker: dict[str, Any] | None = None
    """A :mod:`lmcore.train.tracking` spec: every metrics record goes there too (None: metrics.jsonl only)."""
    mirror: str | None = None
    """An fsspec URL where every checkpoint is published and from which a run resumes when its local
    directory has nothing newer (:mod:`lmcore.train.mirror`); None: checkpoints stay local."""

    def to_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker, "mirror": self.mirror}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Outlets:
        d = dict(d or {})
        if unknown := sorted(set(d) - {"tracker", "mirror"}):
            raise ValueError(f"unknown outlets {unknown}; valid: tracker, mirror")
        return cls(**d)


NO_OUTLETS = Outlets()
"""A run's records and checkpoints stay in its run directory."""
Batch = tuple[torch.Tensor, ...]
"""``(x, y)``, ``(x, y, segment_ids)`` or ``(x, y, segment_ids, prefix)``; ``segment_ids`` may be None (no
packed row in the batch), ``prefix`` (B, T) bool None (no bidirectional prefix)."""


class BatchSource(Protocol):
    """Where the loop's batches come from (``TokenLoader`` for pretraining).

    ``epoch`` and ``position`` say where the next batch comes from (named in errors);
    ``state_dict`` must hold only plain values and make the source continue exactly there.
    """

    epoch: int
    position: int

    def next_batch(self) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Job:
    """What a run trains and on what; everything else (schedule, checkpoints, resume, NaN checks) is the loop's."""

    model_config: ModelConfig
    """Shape of the model; saved as ``config.model`` and its context_length is the sources' window."""
    build_model: Callable[[], torch.nn.Module]
    """The module to train, called once after seeding torch with the run's seed. Like GPT it must answer
    ``forward(x, y, segment_ids=None) -> (logits, loss)``, ``num_params`` and
    ``flops_per_token``; only parameters with ``requires_grad`` are trained."""
    sources: Callable[..., tuple[BatchSource, BatchSource | None]]
    """``sources(context_length=, batch_size=, seed=, rank=, world_size=, validation=)``: the train source and
    the validation source (None when ``validation`` is False)."""
    config: dict[str, Any]
    """Fields besides model/train/world_size that a resumed run must match (data version, init checkpoint)."""
    data: dict[str, Any]
    """Stored as the checkpoints' ``meta["data"]``."""
    export: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    """When set, model.safetensors holds ``export(model)`` (e.g. LoRA merged into a plain GPT) and is not read
    back on resume: the model is rebuilt and its trainable parameters come from optimizer.pt ("trainable"),
    so frozen parameters must come out of ``build_model`` the same every time."""


@dataclass(frozen=True, kw_only=True)
class WarmStart:
    """Pretraining that continues from a previous model: its checkpoint, and the share of windows to replay from
    the train shards it was trained on (``trained_shards``: their sha256, from its meta's ``data``)."""

    checkpoint: Path
    replay_fraction: float
    trained_shards: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "replay_fraction": self.replay_fraction,
            "trained_shards": list(self.trained_shards),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WarmStart:
        return cls(
            checkpoint=Path(d["checkpoint"]),
            replay_fraction=float(d["replay_fraction"]),
            trained_shards=tuple(d["trained_shards"]),
        )


def train_mixture(manifest: dict[str, Any], init: WarmStart | None) -> Mixture | None:
    """The group of each train shard and the groups' weights, or None for plain shuffling.

    Groups are the shard's source spec when the corpus gives mixing weights (``manifest["weights"]``), and
    ``new`` or ``replay`` (whether the previous model was trained on the shard) with ``init``; with both, a
    group is ``spec|new`` with the product of the weights. A share with no shards is left out.
    """
    shards = manifest["splits"]["train"]["shards"]
    by_spec: dict[str, float] | None = manifest.get("weights")
    if by_spec is None and init is None:
        return None
    groups, weights = [], {}
    seen = set(init.trained_shards) if init is not None else set()
    for shard in shards:
        parts, weight = [], 1.0
        if by_spec is not None:
            spec = shard.get("spec", "")
            parts.append(spec)
            weight *= by_spec.get(spec, 1.0)
        if init is not None:
            old = shard["sha256"] in seen
            parts.append("replay" if old else "new")
            weight *= init.replay_fraction if old else 1.0 - init.replay_fraction
        groups.append("|".join(parts))
        weights[groups[-1]] = weight
    if init is not None and len({g.rsplit("|", 1)[-1] for g in groups}) == 1:
        weights = {g: (by_spec or {}).get(g.rsplit("|", 1)[0], 1.0) for g in weights}  # only new, or only old
    return Mixture(groups, weights)


def shard_job(mc: ModelConfig, cfg: TrainConfig, shard_root: Path, *, init: WarmStart | None = None) -> Job:
    """Pretraining: a GPT (new, or ``init``'s weights) on the token shards' "train" windows, validated on "val",
    with ``cfg.objective`` applied to every batch and the sources mixed as the manifest and ``init`` say.

    A test aid: with ``$LMPIPE_WINDOW_LOG_DIR`` set, each rank logs the training windows it draws to
    ``rank-{r}.txt`` there (read when the sources are made, so it reaches every torchrun process)."""
    manifest = load_manifest(shard_root)
    vocab = manifest.get("vocab_size")
    if vocab is not None and vocab > mc.vocab_size:
        raise ValueError(f"{shard_root}: tokens come from a vocabulary of {vocab}; model vocab_size={mc.vocab_size}")
    base_vocab = mc.vocab_size if vocab is None else vocab
    check_model(cfg, mc.attention, mc.vocab_size, base_vocab, mc.context_length)
    objective = Objective(cfg, base_vocab, mc.context_length) if cfg.objective != "causal" else None
    if cfg.eval_batches and "val" not in manifest["splits"]:
        raise ValueError(f"{shard_root} has no 'val' split; add one or set eval_batches=0")
    version = sha256_file(shard_root / MANIFEST)
    mixture = train_mixture(manifest, init)
    start = _warm_start(mc, init) if init is not None else None

    def sources(*, validation: bool, **kw: Any) -> tuple[BatchSource, BatchSource | None]:
        loader = TokenLoader.from_split(shard_root, "train", mixture=mixture, **kw)
        if window_log_dir := os.environ.get(WINDOW_LOG_ENV):
            Path(window_log_dir).mkdir(parents=True, exist_ok=True)
            loader.log_windows(Path(window_log_dir) / f"rank-{kw['rank']}.txt")
        train: BatchSource = loader
        val: BatchSource | None = TokenLoader.from_split(shard_root, "val", **kw) if validation else None
        if objective is not None:
            train = ObjectiveSource(train, objective, kw["seed"], kw["rank"])
            val = ObjectiveSource(val, objective, kw["seed"], kw["rank"]) if val is not None else None
        return train, val

    trained = [s["sha256"] for s in manifest["splits"]["train"]["shards"]]
    data = {
        "shard_root": str(shard_root),
        "manifest_sha256": version,
        "base_vocab": base_vocab,
        "train_shards": trained,
        "mixture_weights": mixture.weights if mixture else None,
    }
    config: dict[str, Any] = {"data_version": version}
    if start is not None:
        assert init is not None
        config["init_checkpoint"] = start[1]
        data |= {
            "init_checkpoint": str(init.checkpoint),
            "init_sha256": start[1],
            "replay_fraction": init.replay_fraction,
        }
    return Job(
        model_config=mc,
        build_model=start[0] if start is not None else (lambda: GPT(mc)),
        sources=sources,
        config=config,
        data=data,
    )


def _warm_start(mc: ModelConfig, init: WarmStart) -> tuple[Callable[[], torch.nn.Module], str]:
    """The model builder loading ``init``'s weights and their digest; ValueError naming what differs when the
    previous model has another shape or vocabulary."""
    from lmcore.model.checkpoint import load_trained_model, read_meta, verify_checkpoint

    if problems := verify_checkpoint(init.checkpoint):
        raise ValueError(f"init checkpoint {init.checkpoint} is not usable: " + "; ".join(problems))
    meta = read_meta(init.checkpoint)
    previous = ModelConfig.from_dict(meta["config"]["model"])
    if previous != mc:
        differ = {k: (v, getattr(mc, k)) for k, v in previous.to_dict().items() if getattr(mc, k, None) != v}
        raise ValueError(
            f"the previous model ({init.checkpoint}) has another shape or vocabulary than this one "
            f"(field: previous, now): {differ}; continue with the same model and tokenizer, or set init: scratch"
        )

    def build() -> torch.nn.Module:
        return load_trained_model(init.checkpoint, "cpu")[0].train()

    return build, meta["files"]["model.safetensors"]
