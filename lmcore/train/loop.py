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

MFU = flops_per_token * tokens/s / (peak FLOP/s per device * world_size), the peak from
``TrainConfig.peak_flops`` or ``lmcore.train.distributed.peak_flops`` (a GPU table, else a
measured matmul: on CPU, MFU is relative to what the cores sustain on a big fp32 matmul).

This module knows nothing of Dagster; only rank 0 writes files or calls the callback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from lmcore.io import atomic_path, exclusive_lock
from lmcore.model.checkpoint import (
    META_FILE,
    MODEL_FILE,
    STATE_FILE,
    checkpoint_dir,
    latest_valid_checkpoint,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    set_aside_newer,
    verify_checkpoint,
)
from lmcore.model.gpt import ModelConfig
from lmcore.train import distributed as D
from lmcore.train import tracking
from lmcore.train.config import TrainConfig, lr_at
from lmcore.train.job import NO_OUTLETS, Batch, Callback, Job, Outlets, WarmStart, shard_job
from lmcore.train.mirror import CheckpointMirror
from lmcore.train.optim import build_optimizer
from lmcore.train.runs import check_resumable, run_dir, run_identity, run_key
from lmcore.train.sharding import Sharded, all_finite, local

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
_RESERVED_META = {"config", "data", "progress", "seed", "params", "step", "files", "format_version"}


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    shard_root: Path,
    runs_dir: Path,
    *,
    callback: Callback | None = None,
    meta_extra: dict[str, Any] | None = None,
    window_log_dir: Path | None = None,
    on_wait: Callable[[Path], None] | None = None,
    outlets: Outlets = NO_OUTLETS,
    init: WarmStart | None = None,
) -> dict[str, Any]:
    """Train (or resume) to ``train_config.max_steps`` in ``runs_dir/<run key>``; return a summary of the run.

    With ``init`` the model starts from a previous checkpoint and draws new and replayed shards in the
    given proportion (``lmcore.train.job.WarmStart``).

    ``meta_extra`` (tokenizer digest, upstream data versions, ...) is stored in every
    checkpoint's meta.json. ``window_log_dir`` (a test aid) makes each rank log the
    training windows it draws to ``rank-{r}.txt``. Raises FloatingPointError naming the
    step and batch if the loss stops being finite; the last good checkpoint is kept.
    """
    shard_root = Path(shard_root)
    return run_job(
        lambda: shard_job(model_config, train_config, shard_root, window_log_dir, init=init),
        train_config,
        runs_dir,
        callback=callback,
        meta_extra=meta_extra,
        on_wait=on_wait,
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
) -> dict[str, Any]:
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
    """State of one training session (one process); ``run()`` drives it."""

    def __init__(self, job: Job, cfg: TrainConfig, runs_dir: Path, env: D.DistEnv, device: torch.device) -> None:
        self.job, self.mc, self.cfg, self.env, self.device = job, job.model_config, cfg, env, device
        self.config = run_identity(self.mc, cfg, env.world_size, job.config)
        self.run_dir = run_dir(runs_dir, self.config)
        self.run_key = run_key(self.config)
        self.fresh_tokens = 0  # tokens trained on (all ranks) since the last account()
        self.step_tokens = 0  # tokens of the last optimizer step (all ranks)
        self.step = 0
        self.progress: dict[str, Any] = {"tokens_seen": 0, "train_seconds": 0.0, "loss_history": [], "val_history": []}
        self.session = {"tokens": 0, "seconds": 0.0}
        self.accounted_step = 0  # progress counts tokens up to this step
        self.resumed_from: int | None = None
        self.grad_norm = torch.zeros(())  # of the last optimizer step, before clipping
        self.tracker: tracking.Tracker | None = None

    def setup(self, callback: Callback | None, meta_extra: dict[str, Any], mirror: str | None) -> None:
        cfg, env, device = self.cfg, self.env, self.device
        self.callback, self.meta_extra = callback, meta_extra
        self.mirror = CheckpointMirror(mirror, self.run_key) if mirror else None
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for float32 runs
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.raw = self.job.build_model().to(device)
        self.raw.train()
        self.flops_per_token = self.raw.flops_per_token()
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
        self.peak = D.peak_flops(device, cfg.dtype, cfg.peak_flops) if env.is_main else None
        self.remeasured = False  # the CPU peak is measured again at most once (see mfu)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def run(self, tracker: dict[str, Any] | None) -> dict[str, Any]:
        self.restore()
        if self.env.is_main and tracker is not None:
            info = dict(run_dir=self.run_dir, run_key=self.run_key, config=self.config)
            self.tracker = tracking.open_tracker(tracker, tracking.RunInfo(**info, resumed_from=self.resumed_from))
        try:
            summary = self.train_to_end()
        except BaseException:
            if self.tracker is not None:
                self.tracker.finish(None)
            raise
        if self.tracker is not None:
            self.tracker.finish(summary)
        return summary

    def train_to_end(self) -> dict[str, Any]:
        self.accounted_step = self.step
        pending: list[tuple[int, torch.Tensor, tuple[int, int]]] = []
        interval = {"tokens": 0, "seconds": 0.0}
        mark = time.perf_counter()
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
            self.account(elapsed)
            record: dict[str, Any] = {"step": self.step}
            if flags["log"]:
                record.update(self.log_record(losses[self.step], interval))
                interval = {"tokens": 0, "seconds": 0.0}
            if flags["eval"]:
                record["val_loss"] = self.evaluate()
                self.progress["val_history"].append([self.step, record["val_loss"]])
            if flags["checkpoint"]:
                record["checkpoint"] = str(checkpoint_dir(self.run_dir, self.step))
            self.emit(record)  # metrics.jsonl first: a crash before the checkpoint lands truncates it on resume
            if flags["checkpoint"]:
                self.save()
            mark = time.perf_counter()
        return self.summary()

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
        self.fresh_tokens += self.step_tokens
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

    def account(self, seconds: float) -> None:
        tokens, self.fresh_tokens = self.fresh_tokens, 0
        self.accounted_step = self.step
        self.session["tokens"] += tokens
        self.session["seconds"] += seconds
        self.progress["tokens_seen"] += tokens
        self.progress["train_seconds"] += seconds

    def log_record(self, loss: float, interval: dict[str, float]) -> dict[str, Any]:
        tps = interval["tokens"] / max(interval["seconds"], 1e-9)
        self.progress["loss_history"].append([self.step, loss])
        lr = lr_at(self.step - 1, self.cfg)
        if self.env.is_main:
            log.info("step %d/%d loss %.4f lr %.3g %.0f tok/s", self.step, self.cfg.max_steps, loss, lr, tps)
        return {
            "loss": loss,
            "lr": lr,
            "tokens_per_s": tps,
            "mfu": self.mfu(tps),
            "tokens": self.progress["tokens_seen"],
            "grad_norm": self.grad_norm.item(),
        }

    def mfu(self, tokens_per_s: float) -> float | None:
        if self.peak is None:
            return None
        mfu = self.flops_per_token * tokens_per_s / (self.peak * self.env.world_size)
        if mfu > 1.0 and self.device.type == "cpu" and self.cfg.peak_flops is None and not self.remeasured:
            # The CPU peak was measured while other processes held a core, so it is too low; measure
            # again (once, within the measurement's time budget, only when the figure is impossible)
            # and keep the best.
            self.remeasured = True
            self.peak = max(self.peak, D.measure_matmul_flops.__wrapped__(str(self.device), self.cfg.dtype))
            mfu = self.flops_per_token * tokens_per_s / (self.peak * self.env.world_size)
        return mfu

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

    def rng_states(self) -> list[dict[str, torch.Tensor | None]]:
        comm = self.device if self.device.type == "cuda" else torch.device("cpu")
        cpu = D.all_gather_bytes(torch.get_rng_state(), self.env, comm)
        if self.device.type == "cuda":
            cuda: list[torch.Tensor | None] = list(
                D.all_gather_bytes(torch.cuda.get_rng_state(self.device), self.env, comm)
            )
        else:
            cuda = [None] * self.env.world_size
        return [{"cpu": c, "cuda": g} for c, g in zip(cpu, cuda, strict=True)]

    def save(self) -> None:
        """Checkpoint on rank 0 (all ranks take part in gathering RNG states and sharded weights), then wait for it.

        With a mirror, rank 0 then publishes the checkpoint there before any rank goes on.
        """
        finite = all_finite(self.raw).to(torch.float32)
        if D.all_reduce_mean(finite, self.env).item() < 1.0:  # every rank raises, or none does
            raise FloatingPointError(
                f"weights are not finite after step {self.step}; not saving; the last good checkpoint "
                f"{latest_valid_checkpoint(self.run_dir) if self.env.is_main else '(see rank 0)'} is kept; "
                "lower lr and rerun"
            )
        model = self.raw
        if self.sharded is not None:
            optimizer = self.sharded.gather(self.opt)
            model = self.sharded.plain  # rank 0's full copy; None elsewhere
        else:
            optimizer = self.opt.state_dict()
        state = {"optimizer": optimizer, "rng": self.rng_states(), "loader": self.train_loader.state_dict()}
        if self.env.is_main:
            weights = model
            if self.job.export is not None:
                state["trainable"] = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
                weights = self.job.export(model)
            meta = {
                **self.meta_extra,
                "config": self.config,
                "seed": self.cfg.seed,
                "params": weights.num_params(),
                "data": self.job.data,
                "progress": self.progress,
            }
            path = save_checkpoint(self.run_dir, self.step, weights, state, meta, keep=self.cfg.keep_checkpoints)
            if self.mirror is not None:
                self.mirror.push(path, self.cfg.keep_checkpoints, metrics=self.run_dir / METRICS_FILE)
        D.barrier(self.env)

    def restore(self) -> None:
        """Resume from the newest valid checkpoint (local, or pulled from the mirror), chosen by rank 0 and
        loaded by every rank."""
        step = -1
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            path = latest_valid_checkpoint(self.run_dir)
            step = -1 if path is None else read_meta(path)["step"]
            if self.mirror is not None and (pulled := self.mirror.pull_newest(self.run_dir, step)) is not None:
                step = pulled
            set_aside_newer(self.run_dir, step)
        step = D.broadcast_int(step, self.env, self.device if self.device.type == "cuda" else torch.device("cpu"))
        if step < 0:
            if self.env.is_main:
                _truncate_metrics(self.run_dir / METRICS_FILE, 0)
            return
        path = checkpoint_dir(self.run_dir, step)
        if not self.env.is_main:
            self.reach(path, step)
        check_resumable(read_meta(path), self.config, source=path)
        target = self.sharded.plain if self.sharded is not None else self.raw  # None: an FSDP rank other than 0
        meta, state = self.load_weights(path, target)
        if self.sharded is not None:
            self.sharded.scatter(self.opt, state["optimizer"] if self.env.is_main else None)
        else:
            self.opt.load_state_dict(state["optimizer"])
        self.train_loader.load_state_dict(state["loader"])
        mine = state["rng"][self.env.rank]
        torch.set_rng_state(mine["cpu"])
        if self.device.type == "cuda" and mine["cuda"] is not None:
            torch.cuda.set_rng_state(mine["cuda"], self.device)
        self.step, self.progress = step, meta["progress"]
        if self.env.is_main:
            _truncate_metrics(self.run_dir / METRICS_FILE, step)
        log.info("resumed from %s at step %d of %d", path, step, self.cfg.max_steps)
        self.resumed_from = step

    def reach(self, path: Path, step: int) -> None:
        """Make rank 0's chosen checkpoint visible to this rank: on another node without a shared run
        directory it is pulled from the mirror (once per node)."""
        if (path / META_FILE).exists():
            return
        if self.mirror is None:
            raise FileNotFoundError(
                f"rank {self.env.rank}: checkpoint {path} (chosen by rank 0) is not on this node; put the runs "
                "directory on a filesystem every node shares, or publish checkpoints through a mirror"
            )
        with exclusive_lock(f"{path}.lock"):
            if not (path / META_FILE).exists():
                self.mirror.pull(step, self.run_dir)

    def load_weights(self, path: Path, model: torch.nn.Module | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Meta and state of checkpoint ``path``, its weights loaded into ``model`` (verified unless rank 0 did).

        A checkpoint whose weights file is an export (``Job.export``) is read back through its trainable
        tensors in the state; ``model`` None reads only meta and state.
        """
        if self.job.export is None and model is not None:
            return load_checkpoint(path, model, verify=not self.env.is_main)
        if not self.env.is_main and (problems := verify_checkpoint(path)):
            raise ValueError(f"checkpoint {path} is corrupt: " + "; ".join(problems))
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        if model is not None:
            params = dict(model.named_parameters())
            trainable = {n for n, p in params.items() if p.requires_grad}
            if set(state["trainable"]) != trainable:
                raise ValueError(f"{path} holds trainable tensors that differ from this run's; use a new run dir")
            with torch.no_grad():
                for name, tensor in state["trainable"].items():
                    params[name].copy_(tensor)
        return read_meta(path), state

    def summary(self) -> dict[str, Any]:
        path = checkpoint_dir(self.run_dir, self.step)
        here = self.env.is_main or (path / META_FILE).exists()  # another node may not see rank 0's disk
        meta = read_meta(path) if here else {"params": None, "files": {MODEL_FILE: None}}
        trained = self.session["seconds"] > 0
        tokens, seconds = (
            (self.session["tokens"], self.session["seconds"])
            if trained
            else (self.progress["tokens_seen"], self.progress["train_seconds"])
        )
        tps = tokens / seconds if seconds > 0 else None
        losses, vals = self.progress["loss_history"], self.progress["val_history"]
        return {
            "step": self.step,
            "train_loss": losses[-1][1] if losses else None,
            "val_loss": vals[-1][1] if vals else None,
            "tokens_seen": self.progress["tokens_seen"],
            "tokens_per_s": tps,
            "mfu": self.mfu(tps) if tps else None,
            "params": meta["params"],
            "flops_per_token": self.flops_per_token,
            "checkpoint": str(path),
            "checkpoint_url": self.mirror.step_url(self.step) if self.mirror is not None else None,
            "run_dir": str(self.run_dir),
            "checkpoint_sha256": meta["files"][MODEL_FILE],
            "resumed_from": self.resumed_from,
            "device": str(self.device),
            "dtype": self.cfg.dtype,
            "world_size": self.env.world_size,
            "loss_history": losses,
            "val_history": vals,
            "realized_mixture": _mixture(self.train_loader),
            "data": self.job.data,
        }


def _mixture(source: Any) -> dict[str, int] | None:
    """Tokens drawn per group by this rank (``TokenLoader.realized_mixture``) when the source mixes groups."""
    while source is not None and not hasattr(source, "realized_mixture"):
        source = getattr(source, "source", None)
    if source is None or getattr(source, "weights", None) is None:
        return None
    return source.realized_mixture()


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the records of steps <= ``step`` (and drop a torn last line), atomically."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(line)["step"] <= step:
                keep.append(line + "\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(keep), encoding="utf-8")
