"""What a training run measures: tokens, throughput, MFU, the loss curves, and the run's :class:`TrainSummary`.

:class:`Meter` keeps the run's ``progress`` (tokens seen, training seconds, loss and validation histories:
saved in every checkpoint, so they survive restarts) and this session's tokens and seconds. MFU =
flops_per_token * tokens/s / (peak FLOP/s per device * world_size), the peak from ``TrainConfig.peak_flops``
or :func:`lmcore.train.distributed.peak_flops`. This module knows nothing of checkpoints' files or of Dagster.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from lmcore.train import distributed as D
from lmcore.train.checkpointer import FinalCheckpoint
from lmcore.train.config import TrainConfig, lr_at
from lmcore.train.summary import TrainSummary

log = logging.getLogger(__name__)


class Meter:
    """Tokens, seconds and losses of one run; rank 0 alone knows the peak, so only its MFU is a number."""

    def __init__(
        self, flops_per_token: float, cfg: TrainConfig, env: D.DistEnv, device: torch.device, peak: float | None
    ) -> None:
        self.flops_per_token, self.cfg, self.env, self.device, self.peak = flops_per_token, cfg, env, device, peak
        self.remeasured = False  # the CPU peak is measured again at most once (see mfu)
        self.fresh_tokens = 0  # tokens trained on (all ranks) since the last account()
        self.progress: dict[str, Any] = {"tokens_seen": 0, "train_seconds": 0.0, "loss_history": [], "val_history": []}
        self.session = {"tokens": 0, "seconds": 0.0}

    def account(self, seconds: float) -> None:
        """Count the tokens trained on since the last call, in ``seconds``."""
        tokens, self.fresh_tokens = self.fresh_tokens, 0
        self.session["tokens"] += tokens
        self.session["seconds"] += seconds
        self.progress["tokens_seen"] += tokens
        self.progress["train_seconds"] += seconds

    def log_record(self, step: int, loss: float, interval: dict[str, float], grad_norm: float) -> dict[str, Any]:
        """The record of a logged step (loss, lr, throughput over ``interval``, MFU, tokens, grad norm)."""
        tps = interval["tokens"] / max(interval["seconds"], 1e-9)
        self.progress["loss_history"].append([step, loss])
        lr = lr_at(step - 1, self.cfg)
        if self.env.is_main:
            log.info("step %d/%d loss %.4f lr %.3g %.0f tok/s", step, self.cfg.max_steps, loss, lr, tps)
        return {
            "loss": loss,
            "lr": lr,
            "tokens_per_s": tps,
            "mfu": self.mfu(tps),
            "tokens": self.progress["tokens_seen"],
            "grad_norm": grad_norm,
        }

    def validated(self, step: int, loss: float) -> None:
        self.progress["val_history"].append([step, loss])

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

    def summary(
        self,
        final: FinalCheckpoint,
        resumed_from: int | None,
        realized_mixture: dict[str, int] | None,
        data: dict[str, Any],
    ) -> TrainSummary:
        """The run's summary at its ``final`` checkpoint: this session's throughput, or the whole run's when this
        session trained no step (it resumed at max_steps)."""
        trained = self.session["seconds"] > 0
        tokens, seconds = (
            (self.session["tokens"], self.session["seconds"])
            if trained
            else (self.progress["tokens_seen"], self.progress["train_seconds"])
        )
        tps = tokens / seconds if seconds > 0 else None
        losses, vals = self.progress["loss_history"], self.progress["val_history"]
        return TrainSummary(
            step=final.step,
            train_loss=losses[-1][1] if losses else None,
            val_loss=vals[-1][1] if vals else None,
            tokens_seen=self.progress["tokens_seen"],
            tokens_per_s=tps,
            mfu=self.mfu(tps) if tps else None,
            params=final.params,
            flops_per_token=self.flops_per_token,
            checkpoint=final.path,
            checkpoint_url=final.url,
            run_dir=final.run_dir,
            checkpoint_sha256=final.sha256,
            resumed_from=resumed_from,
            device=str(self.device),
            dtype=self.cfg.dtype,
            world_size=self.env.world_size,
            loss_history=losses,
            val_history=vals,
            realized_mixture=realized_mixture,
            data=data,
        )
