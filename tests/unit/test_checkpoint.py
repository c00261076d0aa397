"""Checkpoints: atomic layout, safe loading, digest checks, keep-last-K, compatibility errors."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch

from lmcore.io import sha256_file, write_json
from lmcore.model.checkpoint import (
    META_FILE,
    MODEL_FILE,
    STATE_FILE,
    check_compatible,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    verify_checkpoint,
)
from lmcore.model.gpt import GPT, tiny
from lmcore.train.config import TrainConfig
from lmcore.train.optim import build_optimizer


def make_model(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny(vocab_size=64))


def save(run_dir: Path, step: int, model: GPT, keep: int = 2) -> Path:
    opt = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1))
    x = torch.randint(0, 64, (2, 8))
    model(x, x)[1].backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": [{"cpu": torch.get_rng_state()}], "loader": {"epoch": 1}}
    meta = {"config": {"model": model.config.to_dict()}, "seed": 0}
    return save_checkpoint(run_dir, step, model, state, meta, keep=keep)


def test_layout_and_round_trip(tmp_path: Path) -> None:
    model = make_model(0)
    path = save(tmp_path, 5, model)
    assert path == tmp_path / "step-00000005"
    assert sorted(p.name for p in path.iterdir()) == sorted([MODEL_FILE, STATE_FILE, META_FILE])
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000005"], "no staging leftovers"
    meta = read_meta(path)
    assert meta["step"] == 5 and set(meta["files"]) == {MODEL_FILE, STATE_FILE}
    assert verify_checkpoint(path) == []

    other = make_model(1)
    assert not torch.equal(other.lm_head.weight, model.lm_head.weight)
    meta2, state = load_checkpoint(path, other)
    assert meta2 == meta
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert other.transformer.wte.weight is other.lm_head.weight, "tied weights stay tied after loading"
    assert state["loader"] == {"epoch": 1} and state["optimizer"]["state"]
    opt = build_optimizer(other, TrainConfig(lr=1e-3, weight_decay=0.1))
    opt.load_state_dict(state["optimizer"])


def test_load_never_unpickles_objects_even_with_matching_digests(tmp_path: Path) -> None:
    path = save(tmp_path, 1, make_model(0))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (path / STATE_FILE).write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    meta = read_meta(path)
    meta["files"][STATE_FILE] = sha256_file(path / STATE_FILE)  # an attacker can fix the digest too
    write_json(path / META_FILE, meta)
    assert verify_checkpoint(path) == []
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path, make_model(1))
    assert not marker.exists()


def test_keeps_the_newest_k(tmp_path: Path) -> None:
    model = make_model(0)
    for step in (2, 4, 6, 8):
        save(tmp_path, step, model, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [6, 8]


def test_corrupt_newest_falls_back_and_logs_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = make_model(0)
    good = save(tmp_path, 2, model, keep=3)
    newest = save(tmp_path, 4, model, keep=3)
    weights = newest / MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING, logger="lmcore.model.checkpoint"):
        assert latest_valid_checkpoint(tmp_path) == good
    assert "step-00000004" in caplog.text and "sha256 does not match" in caplog.text
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(newest, make_model(1))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: (p / META_FILE).unlink(),
        lambda p: (p / META_FILE).write_text("{not json"),
        lambda p: (p / STATE_FILE).unlink(),
        lambda p: (p / STATE_FILE).write_bytes(b"\0" * 10),
    ],
)
def test_any_damage_makes_a_checkpoint_invalid(tmp_path: Path, damage) -> None:
    path = save(tmp_path, 3, make_model(0))
    damage(path)
    assert verify_checkpoint(path)
    assert latest_valid_checkpoint(tmp_path) is None


def test_refuses_to_save_non_finite_weights(tmp_path: Path) -> None:
    model = make_model(0)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="step 7"):
        save_checkpoint(tmp_path, 7, model, {}, {})
    assert list_checkpoints(tmp_path) == []


def test_check_compatible_names_the_differing_field(tmp_path: Path) -> None:
    meta = {"step": 4, "config": {"model": {"n_layer": 4, "d_model": 64}, "train": {"betas": (0.9, 0.95), "lr": 1e-3}}}
    check_compatible(meta, {"model": {"n_layer": 4, "d_model": 64}, "train": {"betas": [0.9, 0.95], "lr": 1e-3}})
    with pytest.raises(ValueError) as e:
        check_compatible(
            meta, {"model": {"n_layer": 6, "d_model": 64}, "train": {"betas": [0.9, 0.95], "lr": 1e-3}}, source="runs/a"
        )
    msg = str(e.value)
    assert "runs/a" in msg and "n_layer=4" in msg and "n_layer=6" in msg and "d_model" not in msg
    assert "new run dir" in msg
    check_compatible(
        meta, {"model": {"n_layer": 4, "d_model": 64}, "train": {"betas": [0.9, 0.95], "lr": 1}}, ignore=("train.lr",)
    )
