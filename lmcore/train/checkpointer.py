"""A training run's checkpoints: save (weights, optimizer, RNG and loader state, meta), restore, mirror.

:class:`Checkpointer` writes a run's checkpoints into its run directory on rank 0 (every rank takes part in
gathering RNG states and sharded weights), publishes each to the mirror when there is one, and resumes a run
from the newest valid checkpoint, local or pulled from the mirror. It also keeps ``metrics.jsonl`` in step
with the checkpoint a run resumes from. This module knows nothing of the loop's schedule or of Dagster.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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
from lmcore.train import distributed as D
from lmcore.train.config import TrainConfig
from lmcore.train.job import BatchSource, Job
from lmcore.train.mirror import METRICS_FILE, CheckpointMirror
from lmcore.train.runs import check_resumable
from lmcore.train.sharding import Sharded, all_finite

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinalCheckpoint:
    """The checkpoint a run ended at, as this node sees it (``params``/``sha256`` None where it is not here)."""

    step: int
    path: Path
    url: str | None
    run_dir: Path
    params: int | None
    sha256: str | None


@dataclass(frozen=True)
class Resumed:
    """What a restored checkpoint gives back to the loop besides the tensors it loaded in place."""

    step: int
    progress: dict[str, Any]


class Checkpointer:
    """Checkpoints of one run in ``run_dir``; ``meta`` is the head of every checkpoint's meta.json (the
    caller's ``meta_extra`` and the run's identity under ``"config"``)."""

    def __init__(
        self,
        run_dir: Path,
        job: Job,
        cfg: TrainConfig,
        env: D.DistEnv,
        device: torch.device,
        *,
        meta: dict[str, Any],
        mirror: CheckpointMirror | None,
    ) -> None:
        self.run_dir, self.job, self.cfg, self.env, self.device = run_dir, job, cfg, env, device
        self.meta, self.mirror = meta, mirror

    def _comm(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def rng_states(self) -> list[dict[str, torch.Tensor | None]]:
        cpu = D.all_gather_bytes(torch.get_rng_state(), self.env, self._comm())
        if self.device.type == "cuda":
            cuda: list[torch.Tensor | None] = list(
                D.all_gather_bytes(torch.cuda.get_rng_state(self.device), self.env, self._comm())
            )
        else:
            cuda = [None] * self.env.world_size
        return [{"cpu": c, "cuda": g} for c, g in zip(cpu, cuda, strict=True)]

    def save(
        self,
        step: int,
        raw: torch.nn.Module,
        opt: torch.optim.Optimizer,
        sharded: Sharded | None,
        loader: BatchSource,
        progress: dict[str, Any],
    ) -> None:
        """Checkpoint ``step`` on rank 0, then wait for it; with a mirror, rank 0 then publishes the checkpoint
        there before any rank goes on."""
        finite = all_finite(raw).to(torch.float32)
        if D.all_reduce_mean(finite, self.env).item() < 1.0:  # every rank raises, or none does
            raise FloatingPointError(
                f"weights are not finite after step {step}; not saving; the last good checkpoint "
                f"{latest_valid_checkpoint(self.run_dir) if self.env.is_main else '(see rank 0)'} is kept; "
                "lower lr and rerun"
            )
        model = raw
        if sharded is not None:
            optimizer = sharded.gather(opt)
            model = sharded.plain  # rank 0's full copy; None elsewhere
        else:
            optimizer = opt.state_dict()
        state = {"optimizer": optimizer, "rng": self.rng_states(), "loader": loader.state_dict()}
        if self.env.is_main:
            weights = model
            if self.job.export is not None:
                state["trainable"] = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
                weights = self.job.export(model)
            meta = {
                **self.meta,
                "seed": self.cfg.seed,
                "params": weights.num_params(),
                "data": self.job.data,
                "progress": progress,
            }
            path = save_checkpoint(self.run_dir, step, weights, state, meta, keep=self.cfg.keep_checkpoints)
            if self.mirror is not None:
                self.mirror.push(path, self.cfg.keep_checkpoints, metrics=self.run_dir / METRICS_FILE)
        D.barrier(self.env)

    def restore(
        self, raw: torch.nn.Module, opt: torch.optim.Optimizer, sharded: Sharded | None, loader: BatchSource
    ) -> Resumed | None:
        """Resume from the newest valid checkpoint (local, or pulled from the mirror), chosen by rank 0 and
        loaded by every rank into ``raw``, ``opt``, ``loader`` and the RNG; None when there is none."""
        step = -1
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            path = latest_valid_checkpoint(self.run_dir)
            step = -1 if path is None else read_meta(path)["step"]
            if self.mirror is not None and (pulled := self.mirror.pull_newest(self.run_dir, step)) is not None:
                step = pulled
            set_aside_newer(self.run_dir, step)
        step = D.broadcast_int(step, self.env, self._comm())
        if step < 0:
            if self.env.is_main:
                truncate_metrics(self.run_dir / METRICS_FILE, 0)
            return None
        path = checkpoint_dir(self.run_dir, step)
        if not self.env.is_main:
            self.reach(path, step)
        check_resumable(read_meta(path), self.meta["config"], source=path)
        target = sharded.plain if sharded is not None else raw  # None: an FSDP rank other than 0
        meta, state = self.load_weights(path, target)
        if sharded is not None:
            sharded.scatter(opt, state["optimizer"] if self.env.is_main else None)
        else:
            opt.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        mine = state["rng"][self.env.rank]
        torch.set_rng_state(mine["cpu"])
        if self.device.type == "cuda" and mine["cuda"] is not None:
            torch.cuda.set_rng_state(mine["cuda"], self.device)
        if self.env.is_main:
            truncate_metrics(self.run_dir / METRICS_FILE, step)
        log.info("resumed from %s at step %d of %d", path, step, self.cfg.max_steps)
        return Resumed(step, meta["progress"])

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

    def final(self, step: int) -> FinalCheckpoint:
        """The checkpoint of ``step``; its size and digest where this node sees it (another node may not see
        rank 0's disk)."""
        path = checkpoint_dir(self.run_dir, step)
        here = self.env.is_main or (path / META_FILE).exists()
        meta = read_meta(path) if here else {"params": None, "files": {MODEL_FILE: None}}
        url = self.mirror.step_url(step) if self.mirror is not None else None
        return FinalCheckpoint(step, path, url, self.run_dir, meta["params"], meta["files"][MODEL_FILE])


def truncate_metrics(path: Path, step: int) -> None:
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
