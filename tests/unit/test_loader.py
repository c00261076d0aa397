"""TokenLoader: packing across shards, seeded per-epoch order, rank sharding, exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lmcore.data.loader import TokenLoader
from lmcore.data.shards import TokenShardWriter, write_manifest


def write_split(root: Path, tokens: np.ndarray, *, shard_tokens: int, split: str = "train") -> None:
    with TokenShardWriter(root / split, np.uint16, shard_tokens=shard_tokens) as w:
        w.add(tokens)
    write_manifest(root, {split: {"shards": w.shards, "tokens": w.tokens}})


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    # token i has id i % 60000, so a window's content reveals exactly where it came from
    write_split(tmp_path, np.arange(1000, dtype=np.int64) % 60000, shard_tokens=97)
    return tmp_path


def drain(loader: TokenLoader, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy().copy(), y.numpy().copy()) for x, y in (loader.next_batch() for _ in range(n))]


def test_windows_are_contiguous_across_shard_boundaries(root: Path) -> None:
    loader = TokenLoader.from_split(root, "train", context_length=16, batch_size=4, seed=3)
    assert len(loader.arrays) == 11 and loader.num_tokens == 1000
    assert loader.num_windows == 999 // 16
    seen_cross = 0
    for _ in range(loader.batches_per_epoch):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        starts = x[:, 0].numpy()
        assert (starts % 16 == 0).all()
        expect = starts[:, None] + np.arange(17)
        np.testing.assert_array_equal(x.numpy(), expect[:, :-1])
        np.testing.assert_array_equal(y.numpy(), expect[:, 1:])
        seen_cross += int(((starts // 97) != ((starts + 16) // 97)).sum())
    assert seen_cross > 0, "the fixture should produce windows that span a shard boundary"


def test_two_ranks_cover_every_window_once_per_epoch_disjointly(root: Path) -> None:
    kw = dict(context_length=8, batch_size=4, seed=7, world_size=2)
    r0, r1 = (TokenLoader.from_split(root, "train", rank=r, **kw) for r in (0, 1))
    assert r0.num_windows == 124 and r0.batches_per_epoch == r1.batches_per_epoch == 15
    for epoch in range(2):
        got = [np.concatenate([x[:, 0] // 8 for x, _ in drain(r, r.batches_per_epoch)]) for r in (r0, r1)]
        assert not set(got[0]) & set(got[1])
        # every window drawn this epoch is distinct, and the union is the permutation minus its tail
        perm = np.random.default_rng([7, epoch]).permutation(124)
        assert sorted(np.concatenate(got)) == sorted(perm[:120])
        assert r0.epoch == r1.epoch == epoch + 1 and r0.position == 0


def test_exact_cover_when_windows_divide_evenly(tmp_path: Path) -> None:
    write_split(tmp_path, np.arange(8 * 24 + 1) % 500, shard_tokens=50)
    loaders = [
        TokenLoader.from_split(tmp_path, "train", context_length=8, batch_size=3, seed=1, rank=r, world_size=2)
        for r in (0, 1)
    ]
    seen = [int(x[i, 0]) // 8 for loader in loaders for x, _ in drain(loader, 4) for i in range(3)]
    assert sorted(seen) == list(range(24))


def test_epochs_reshuffle_and_same_seed_repeats(root: Path) -> None:
    a = TokenLoader.from_split(root, "train", context_length=8, batch_size=4, seed=5)
    b = TokenLoader.from_split(root, "train", context_length=8, batch_size=4, seed=5)
    c = TokenLoader.from_split(root, "train", context_length=8, batch_size=4, seed=6)
    assert not np.array_equal(a.window_order(0), a.window_order(1))
    np.testing.assert_array_equal(a.window_order(0), b.window_order(0))
    assert not np.array_equal(a.window_order(0), c.window_order(0))


def test_resume_mid_epoch_yields_identical_batches(root: Path) -> None:
    kw = dict(context_length=8, batch_size=4, seed=11, rank=1, world_size=2)
    full = TokenLoader.from_split(root, "train", **kw)
    reference = drain(full, 40)  # crosses into the third epoch
    first = TokenLoader.from_split(root, "train", **kw)
    drain(first, 22)
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (1, 7)
    resumed = TokenLoader.from_split(root, "train", **kw)
    resumed.load_state_dict(state)
    for (x0, y0), (x1, y1) in zip(reference[22:], drain(resumed, 18), strict=True):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)


def test_load_state_rejects_a_different_world_size(root: Path) -> None:
    state = TokenLoader.from_split(root, "train", context_length=8, batch_size=4, world_size=2).state_dict()
    other = TokenLoader.from_split(root, "train", context_length=8, batch_size=4, world_size=1)
    with pytest.raises(ValueError, match="world_size=2"):
        other.load_state_dict(state)


def test_too_little_data_names_the_fix(root: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TokenLoader.from_split(root, "train", context_length=256, batch_size=8)


def test_window_log_records_each_batch(root: Path, tmp_path: Path) -> None:
    log = tmp_path / "windows.txt"
    loader = TokenLoader.from_split(root, "train", context_length=8, batch_size=4)
    loader.log_windows(log)
    batches = drain(loader, 3)
    lines = log.read_text().splitlines()
    assert [line.split()[:2] for line in lines] == [["0", "0"], ["0", "1"], ["0", "2"]]
    assert [int(t) for t in lines[2].split()[2:]] == list(batches[2][0][:, 0] // 8)


def test_keeping_the_last_partial_batch_covers_every_window(root: Path) -> None:
    loader = TokenLoader.from_split(root, "train", context_length=16, batch_size=8, drop_last=False)
    assert loader.num_windows == 62 and loader.batches_per_epoch == 8
    batches = drain(loader, 8)
    assert [x.shape[0] for x, _ in batches] == [8] * 7 + [6]
    assert sorted(int(s) // 16 for x, _ in batches for s in x[:, 0]) == list(range(62))
    assert (loader.epoch, loader.position) == (1, 0)
