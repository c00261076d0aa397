"""Pretraining loop: AdamW (or Muon, :mod:`lmcore.train.optim`) with warmup + cosine (or WSD), grad
accumulation and clipping, autocast, periodic validation, atomic checkpoints, exact resume, and the same
code under torchrun.

``train()`` is the entry for pretraining on token shards. Every run lives in
``runs_dir/<run key>`` (:mod:`lmcore.train.runs`: the key digests the run's identity, so the
same model, data and loss-relevant config land in the same directory); it resumes from the
newest valid checkpoint there when there is one, or starts fresh, and runs to ``max_steps``.
A second process asking for the same run waits for the first (a file lock).
``run_job()`` is the same loop for any :class:`Job` (a model to build and
:class:`BatchSource` s of batches); ``lmcore.finetune`` fine-tunes through it. Progress
leaves through ``callback`` (rank 0 only) and ``logging``, and is appended to
``<run dir>/metrics.jsonl``; the loss curve is also stored in every checkpoint's meta.json,
so the whole curve survives restarts. On CPU the same config gives the same
losses, whether or not the run was interrupted and resumed.

This module is the loop itself: the step, validation and when to log, validate and save. Checkpoints
(save, restore, mirror, RNG state) are :mod:`lmcore.train.checkpointer`'s; tokens, throughput, MFU and the
:class:`~lmcore.train.summary.TrainSummary` are :mod:`lmcore.train.meter`'s. It knows nothing of Dagster;
only rank 0 writes files or calls the callback.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from lmcore.io import exclusive_lock
from lmcore.model.checkpoint import checkpoint_dir, latest_valid_checkpoint
from lmcore.model.gpt import ModelConfig
from lmcore.train import distributed as D
from lmcore.train import trackers, tracking
from lmcore.train.checkpointer import Checkpointer
from lmcore.train.config import TrainConfig, lr_at
from lmcore.train.job import NO_OUTLETS, Batch, Callback, Job, Outlets, WarmStart, shard_job
from lmcore.train.meter import Meter
from lmcore.train.mirror import METRICS_FILE, CheckpointMirror
from lmcore.train.optim import build_optimizer
from lmcore.train.runs import run_dir, run_identity, run_key
from lmcore.train.sharding import Sharded, local
from lmcore.train.summary import TrainSummary

__all__ = ["METRICS_FILE", "run_job", "train"]

_RESERVED_META = {"config", "data", "progress", "seed", "params", "step", "files", "format_version"}


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    shard_root: Path,
    runs_dir: Path,
    *,
    callback: Callback | None = None,
    meta_extra: dict[str, Any] | None = None,
    outlets: Outlets = NO_OUTLETS,
    init: WarmStart | None = None,
) -> TrainSummary:
    """Train (or resume) to ``train_config.max_steps`` in ``runs_dir/<run key>``; return a summary of the run.

    With ``init`` the model starts from a previous checkpoint and draws new and replayed shards in the
    given proportion (``lmcore.train.job.WarmStart``).

    ``meta_extra`` (tokenizer digest, upstream data versions, ...) is stored in every
    checkpoint's meta.json. Raises FloatingPointError naming the step and batch if the loss stops being
    finite; the last good checkpoint is kept. ``lmcore.train.spec.PretrainSpec`` is the same run as one object.
    """
    shard_root = Path(shard_root)
    return run_job(
        lambda: shard_job(model_config, train_config, shard_root, init=init),
        train_config,
        runs_dir,
        callback=callback,
        meta_extra=meta_extra,
        outlets=outlets,
    )


def run_job(
    make_job: Callable[[], Job],
    train_config: TrainConfig,
    runs_dir: Path,
    *,
    callback: Callback | None = None,
    meta_extra: dict[str, Any] | None = None,
    on_wait: Callable[[Path], None] | None = None,
    outlets: Outlets = NO_OUTLETS,
) -> TrainSummary:
    """The loop of :func:`train` for any :class:`Job` (built by ``make_job`` once the process group is up).

    The run's directory is ``runs_dir/<run key>`` (:func:`lmcore.train.runs.run_dir`), named in the summary
    as ``run_dir``. Rank 0 holds a lock on it for the whole run; ``on_wait(run_dir)`` is called once if
    another process holds it (that run finishes first, and this one then resumes or reuses it).
    ``outlets`` say where rank 0 also sends records (a tracker) and checkpoints (a mirror, from which a run
    also resumes, so it can continue on another machine).
    """
    clash = sorted(_RESERVED_META & set(meta_extra or {}))
    if clash:
        raise ValueError(f"meta_extra keys {clash} are reserved for the checkpoint's own fields; rename them")
    env = D.dist_env()
    device = D.resolve_device(train_config.device, env)
    created = D.init_distributed(env, device.type)
    try:
        run = _Run(make_job(), train_config.resolved(str(device)), Path(runs_dir), env, device)
        lock = exclusive_lock(f"{run.run_dir}.lock", on_wait=lambda: on_wait and on_wait(run.run_dir))
        with lock if env.is_main else contextlib.nullcontext():
            run.setup(callback, meta_extra or {}, outlets.mirror)
            return run.run(outlets.tracker)
    finally:
        if created:
            D.shutdown_distributed()


class _Run:
    """One training session (one process): the model, its optimizer and sources, and the loop; ``run()`` drives
    it. Checkpoints are ``self.checkpoints``' (a :class:`Checkpointer`), measurements ``self.meter``'s."""

    def __init__(self, job: Job, cfg: TrainConfig, runs_dir: Path, env: D.DistEnv, device: torch.device) -> None:
        self.job, self.mc, self.cfg, self.env, self.device = job, job.model_config, cfg, env, device
        self.config = run_identity(self.mc, cfg, env.world_size, job.config)
        self.run_dir = run_dir(runs_dir, self.config)
        self.run_key = run_key(self.config)
        self.step_tokens = 0  # tokens of the last optimizer step (all ranks)
        self.step = 0
        self.resumed_from: int | None = None
        self.grad_norm = torch.zeros(())  # of the last optimizer step, before clipping
        self.tracker: tracking.Tracker | None = None

    def setup(self, callback: Callback | None, meta_extra: dict[str, Any], mirror: str | None) -> None:
        cfg, env, device = self.cfg, self.env, self.device
        self.callback = callback
        meta = {**meta_extra, "config": self.config}  # the head of every checkpoint's meta.json
        remote = CheckpointMirror(mirror, self.run_key) if mirror else None
        self.checkpoints = Checkpointer(self.run_dir, self.job, cfg, env, device, meta=meta, mirror=remote)
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for float32 runs
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.raw = self.job.build_model().to(device)
        self.raw.train()
        flops_per_token = self.raw.flops_per_token()
        fsdp = env.distributed and cfg.data_parallel == "fsdp"
        self.sharded = Sharded(self.raw, device, env.is_main) if fsdp else None
        self.opt = build_optimizer(self.raw, cfg)
        self.eval_model = torch.compile(self.raw) if cfg.compile else self.raw
        self.model: torch.nn.Module = self.eval_model
        if env.distributed and self.sharded is None:
            self.model = DDP(self.eval_model, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, env.rank]).generate_state(1)[0]))  # dropout
        kw = dict(context_length=self.mc.context_length, batch_size=cfg.batch_size, seed=cfg.seed)
        kw.update(rank=env.rank, world_size=env.world_size)
        self.train_loader, self.val_loader = self.job.sources(validation=bool(cfg.eval_batches), **kw)
        self.val_start = self.val_loader.state_dict() if self.val_loader else None
        self.dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
        peak = D.peak_flops(device, cfg.dtype, cfg.peak_flops) if env.is_main else None
        self.meter = Meter(flops_per_token, cfg, env, device, peak)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def run(self, tracker: dict[str, Any] | None) -> TrainSummary:
        resumed = self.checkpoints.restore(self.raw, self.opt, self.sharded, self.train_loader)
        if resumed is not None:
            self.step = self.resumed_from = resumed.step
            self.meter.progress = resumed.progress
        if self.env.is_main and tracker is not None:
            info = dict(run_dir=self.run_dir, run_key=self.run_key, config=self.config)
            self.tracker = trackers.open_tracker(tracker, tracking.RunInfo(**info, resumed_from=self.resumed_from))
        try:
            summary = self.train_to_end()
        except BaseException:
            if self.tracker is not None:
                self.tracker.finish(None)
            raise
        if self.tracker is not None:
            self.tracker.finish(summary)
        return summary

    def train_to_end(self) -> TrainSummary:
        pending: list[tuple[int, torch.Tensor, tuple[int, int]]] = []
        interval = {"tokens": 0, "seconds": 0.0}
        mark = time.perf_counter()
        if self.cfg.max_steps == 0 and self.resumed_from is None:
            self.start_unchanged()
        while self.step < self.cfg.max_steps:
            batch = (self.train_loader.epoch, self.train_loader.position)
            loss = self.train_step()
            self.step += 1
            pending.append((self.step, loss, batch))
            interval["tokens"] += self.step_tokens
            flags = self.due(self.step)
            if not any(flags.values()):
                continue
            losses = self.check_losses(pending)  # syncs, so the clock below is honest
            pending = []
            elapsed = time.perf_counter() - mark
            interval["seconds"] += elapsed
            self.meter.account(elapsed)
            record: dict[str, Any] = {"step": self.step}
            if flags["log"]:
                record.update(self.meter.log_record(self.step, losses[self.step], interval, self.grad_norm.item()))
                interval = {"tokens": 0, "seconds": 0.0}
            if flags["eval"]:
                record["val_loss"] = self.evaluate()
                self.meter.validated(self.step, record["val_loss"])
            if flags["checkpoint"]:
                record["checkpoint"] = str(checkpoint_dir(self.run_dir, self.step))
            self.emit(record)  # metrics.jsonl first: a crash before the checkpoint lands truncates it on resume
            if flags["checkpoint"]:
                progress = self.meter.progress
                self.checkpoints.save(self.step, self.raw, self.opt, self.sharded, self.train_loader, progress)
            mark = time.perf_counter()
        final = self.checkpoints.final(self.step)
        return self.meter.summary(final, self.resumed_from, _mixture(self.train_loader), self.job.data)

    def start_unchanged(self) -> None:
        """``max_steps: 0``: the starting weights, evaluated, become the checkpoint of step 0."""
        record: dict[str, Any] = {"step": 0}
        if self.cfg.eval_batches:
            record["val_loss"] = self.evaluate()
            self.meter.validated(0, record["val_loss"])
        record["checkpoint"] = str(checkpoint_dir(self.run_dir, 0))
        self.emit(record)
        self.checkpoints.save(0, self.raw, self.opt, self.sharded, self.train_loader, self.meter.progress)

    def due(self, step: int) -> dict[str, bool]:
        cfg, last = self.cfg, step == self.cfg.max_steps
        return {
            "log": step % cfg.log_every == 0 or last,
            "eval": bool(cfg.eval_batches) and ((cfg.eval_every > 0 and step % cfg.eval_every == 0) or last),
            "checkpoint": (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0) or last,
        }

    def train_step(self) -> torch.Tensor:
        """One optimizer step over grad_accum_steps micro-batches; returns the mean loss (on device)."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's matrices follow the schedule at their own scale
        total = torch.zeros((), device=self.device)
        self.step_tokens = 0
        for micro in range(cfg.grad_accum_steps):
            batch = self.to_device(self.train_loader.next_batch())
            self.step_tokens += batch[0].numel() * self.env.world_size  # ranks draw equal shapes (token shards)
            last = micro == cfg.grad_accum_steps - 1
            sync = contextlib.nullcontext() if last or not isinstance(self.model, DDP) else self.model.no_sync()
            with sync:  # DDP all-reduces gradients only on the last micro-batch
                with self.autocast():
                    loss = self.forward_loss(self.model, batch)
                (loss / cfg.grad_accum_steps).backward()
            total += loss.detach().float()
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), cfg.grad_clip)
        else:  # reported all the same
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.raw.parameters() if p.grad is not None])
        self.grad_norm = local(norm).detach()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.meter.fresh_tokens += self.step_tokens
        return total / cfg.grad_accum_steps

    @staticmethod
    def forward_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        x, y, *rest = batch
        names = ("segment_ids", "prefix")  # packed rows: attention stays inside each segment; a two-way prefix
        kw = {name: t for name, t in zip(names, rest, strict=False) if t is not None}
        return model(x, y, **kw)[1]

    def to_device(self, batch: Batch) -> Batch:
        if self.device.type != "cuda":
            return batch
        return tuple(None if t is None else t.pin_memory().to(self.device, non_blocking=True) for t in batch)

    def check_losses(self, pending: list[tuple[int, torch.Tensor, tuple[int, int]]]) -> dict[int, float]:
        """Rank-averaged losses by step; raise at the first one that is not finite."""
        values = D.all_reduce_mean(torch.stack([loss for _, loss, _ in pending]), self.env).tolist()
        for (step, _, (epoch, position)), value in zip(pending, values, strict=True):
            if not math.isfinite(value):
                good = latest_valid_checkpoint(self.run_dir) if self.env.is_main else None
                raise FloatingPointError(
                    f"loss is {value} at step {step} (train batch epoch={epoch}, position={position}, "
                    f"{self.cfg.grad_accum_steps} micro-batch(es) per step); the last good checkpoint "
                    f"{good or '(none)'} is kept; lower lr, raise warmup_steps or check the data, then rerun"
                )
        return {step: value for (step, _, _), value in zip(pending, values, strict=True)}

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the same eval_batches validation batches every time (averaged over ranks)."""
        assert self.val_loader is not None and self.val_start is not None
        self.raw.eval()
        self.val_loader.load_state_dict(self.val_start)
        total = torch.zeros((), device=self.device)
        for _ in range(self.cfg.eval_batches):
            batch = self.to_device(self.val_loader.next_batch())
            with self.autocast():
                loss = self.forward_loss(self.eval_model, batch)
            total += loss.float()
        self.raw.train()
        return D.all_reduce_mean(total / self.cfg.eval_batches, self.env).item()

    def emit(self, record: dict[str, Any]) -> None:
        if not self.env.is_main:
            return
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.run_dir / METRICS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)  # one write of one whole line
        finally:
            os.close(fd)
        if self.tracker is not None:
            self.tracker.log(record)
        if self.callback is not None:
            self.callback(record)


def _mixture(source: Any) -> dict[str, int] | None:
    """Tokens drawn per group by this rank (``TokenLoader.realized_mixture``) when the source mixes groups."""
    while source is not None and not hasattr(source, "realized_mixture"):
        source = getattr(source, "source", None)
    if source is None or getattr(source, "weights", None) is None:
        return None
    return source.realized_mixture()
