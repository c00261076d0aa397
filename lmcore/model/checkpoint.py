"""Training checkpoints: atomic step directories, digests, newest-valid lookup, compatibility.

Layout under a run directory::

    step-00000200/
        model.safetensors   weights (tied matrices stored once; read with safetensors.torch.load_model)
        optimizer.pt        {"optimizer", "rng", "loader", ...}: plain tensors/dicts/lists/ints only,
                            read with torch.load(weights_only=True)
        meta.json           written last: resolved config, step, seed, data versions and the
                            sha256 of each file above

A checkpoint is built in a staging directory and renamed in whole, so a crash leaves
either the full directory or none. Readers verify every digest before trusting one;
nothing is ever unpickled beyond ``weights_only`` loading. This module knows nothing of
training loops, loaders or process groups.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from lmcore.io import atomic_dir, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "optimizer.pt"
META_FILE = "meta.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"step-{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint directory under ``run_dir``, oldest first (not verified)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    meta: dict[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write ``step-{step:08d}/`` atomically, then delete all but the newest ``keep`` checkpoints.

    ``state`` must hold only tensors, dicts, lists, tuples and scalars. Refuses weights
    that are not finite, so a diverged model never becomes a checkpoint.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise FloatingPointError(f"refusing to save step {step}: non-finite values in {bad[:5]}")
    path = checkpoint_dir(run_dir, step)
    with atomic_dir(path) as staging:
        save_model(model, str(staging / MODEL_FILE))
        torch.save(state, staging / STATE_FILE)
        files = {name: sha256_file(staging / name) for name in (MODEL_FILE, STATE_FILE)}
        write_json(staging / META_FILE, {**meta, "format_version": FORMAT_VERSION, "step": step, "files": files})
    prune_checkpoints(run_dir, keep)
    return path


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoint directories; return what was deleted."""
    doomed = [p for _, p in list_checkpoints(run_dir)[:-keep]]
    for p in doomed:
        shutil.rmtree(p)
        log.info("deleted old checkpoint %s (keeping the newest %d)", p, keep)
    return doomed


def verify_checkpoint(path: str | Path) -> list[str]:
    """Problems with a checkpoint directory (missing/unreadable meta, missing files, digest mismatch)."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.exists():
        return [f"{meta_path} is missing (the checkpoint was never completed)"]
    try:
        meta = read_json(meta_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return [f"{meta_path} is not valid JSON: {e}"]
    problems = []
    m = _STEP_DIR.match(path.name)
    if m and meta.get("step") != int(m.group(1)):
        problems.append(f"{meta_path} says step {meta.get('step')} but the directory is {path.name}")
    files = meta.get("files")
    if not isinstance(files, dict) or set(files) != {MODEL_FILE, STATE_FILE}:
        return problems + [f"{meta_path} lists files {files!r}; expected {MODEL_FILE} and {STATE_FILE}"]
    for name, digest in sorted(files.items()):
        file = path / name
        if not file.exists():
            problems.append(f"{file} is missing")
        elif sha256_file(file) != digest:
            problems.append(f"{file}: sha256 does not match {META_FILE} (truncated or corrupted)")
    return problems


def latest_valid_checkpoint(run_dir: str | Path) -> Path | None:
    """Newest checkpoint whose files match the digests in its meta.json; None if there is none.

    Each corrupt checkpoint passed over is logged with the reason.
    """
    for _, path in reversed(list_checkpoints(run_dir)):
        problems = verify_checkpoint(path)
        if not problems:
            return path
        log.warning("skipping corrupt checkpoint %s: %s", path, "; ".join(problems))
    return None


def read_meta(path: str | Path) -> dict[str, Any]:
    return read_json(Path(path) / META_FILE)


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, *, verify: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights into ``model`` (strictly, on its device) and return ``(meta, state)`` with state on CPU."""
    path = Path(path)
    if verify and (problems := verify_checkpoint(path)):
        raise ValueError(f"checkpoint {path} is corrupt: " + "; ".join(problems))
    meta = read_meta(path)
    device = next(model.parameters()).device
    load_model(model, path / MODEL_FILE, strict=True, device=str(device))
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    return meta, state


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for key, value in d.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


_ABSENT = "<absent>"


def check_compatible(
    meta: dict[str, Any],
    config: dict[str, Any],
    *,
    ignore: tuple[str, ...] = (),
    source: str | Path | None = None,
) -> None:
    """Raise ValueError naming every field where ``config`` differs from the checkpoint's ``meta["config"]``.

    Both are compared as JSON (tuples equal lists); fields are dotted paths such as
    ``model.n_layer``; paths in ``ignore`` (e.g. ``train.log_every``) may differ. ``source``
    (the checkpoint's path) only makes the message clearer.
    """
    saved = _flatten(json.loads(json.dumps(meta.get("config", {}))))
    asked = _flatten(json.loads(json.dumps(config)))
    diffs = [
        (key, saved.get(key, _ABSENT), asked.get(key, _ABSENT))
        for key in sorted(set(saved) | set(asked))
        if key not in ignore and saved.get(key, _ABSENT) != asked.get(key, _ABSENT)
    ]
    if diffs:
        where = source if source is not None else f"step {meta.get('step')}"
        was = ", ".join(f"{k}={json.dumps(a)}" for k, a, _ in diffs)
        now = ", ".join(f"{k}={json.dumps(b)}" for k, _, b in diffs)
        raise ValueError(
            f"checkpoint at {where} was written with {was}; this run asks {now}; use a new run dir or the same config"
        )


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """A verified checkpoint's model (built from the config saved in it), in eval mode, and its meta."""
    from lmcore.model.gpt import GPT, ModelConfig

    meta = read_meta(path)
    model = GPT(ModelConfig.from_dict(meta["config"]["model"])).to(device)
    load_checkpoint(path, model)
    return model.eval(), meta


def set_aside_newer(run_dir: Path, step: int) -> None:
    """Rename checkpoints newer than ``step`` (they failed verification) out of the way, and drop staging dirs."""
    for s, path in list_checkpoints(run_dir):
        if s > step:
            aside = path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
            path.rename(aside)
            log.warning("set aside corrupt checkpoint %s as %s", path, aside.name)
    for stale in run_dir.glob(".step-*.staging"):
        shutil.rmtree(stale, ignore_errors=True)
