"""TokenLoader weighted mixing: per-group shares, upsampling, group-pure windows, ranks, resume, realized mixture."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmcore.data.loader import Mixture, TokenLoader, largest_remainder


def make_loader(arrays, *, groups=None, weights=None, **kw) -> TokenLoader:
    """A TokenLoader whose mixture is given as ``groups`` and ``weights``, as these tests write it."""
    return TokenLoader(arrays, mixture=None if groups is None else Mixture(groups, weights), **kw)


T = 8
CODE = 100_000
"""Token ``c * CODE + i`` is token ``i`` of the c-th group (in the order first given), so values reveal both."""


def grouped(sizes: list[tuple[str, int]]) -> tuple[list[np.ndarray], list[str]]:
    """Arrays of the given (group, size) in order; each group's arrays continue one running count."""
    codes: dict[str, int] = {}
    next_token: dict[str, int] = {}
    arrays, labels = [], []
    for group, size in sizes:
        code = codes.setdefault(group, len(codes) + 1)
        start = next_token.get(group, 0)
        arrays.append(code * CODE + np.arange(start, start + size, dtype=np.int64))
        next_token[group] = start + size
        labels.append(group)
    return arrays, labels


def group_of(x: np.ndarray, labels: list[str]) -> np.ndarray:
    """Group name of every token in ``x``, by its value."""
    names = np.array(list(dict.fromkeys(labels)))
    return names[x // CODE - 1]


def drain(loader: TokenLoader, n: int) -> list[np.ndarray]:
    """Inputs of the next ``n`` batches; checks each target row is its input row shifted by one."""
    out = []
    for _ in range(n):
        x, y = loader.next_batch()
        np.testing.assert_array_equal(x.numpy()[:, 1:], y.numpy()[:, :-1])
        out.append(x.numpy().copy())
    return out


def hand_mixture(batches: list[np.ndarray], labels: list[str]) -> dict[str, int]:
    counts = Counter(group_of(np.concatenate(batches), labels).ravel().tolist())
    return {g: counts.get(g, 0) for g in sorted(set(labels))}


# "big": 1601 tokens in three arrays -> 200 windows; "small": 89 tokens -> 11 windows; N = 211
BIG_SMALL = [("big", 500), ("small", 40), ("big", 301), ("small", 49), ("big", 800)]


def test_largest_remainder_sums_exactly_and_breaks_ties_by_name() -> None:
    assert largest_remainder(211, {"big": 0.7, "small": 0.3}) == {"big": 148, "small": 63}
    assert largest_remainder(10, {"c": 1.0, "a": 1.0, "b": 1.0}) == {"a": 4, "b": 3, "c": 3}
    assert largest_remainder(7, {"x": 0.0, "y": 2.0}) == {"x": 0, "y": 7}


def test_epoch_shares_follow_the_weights_and_upsample_the_small_group() -> None:
    arrays, labels = grouped(BIG_SMALL)
    loader = make_loader(
        arrays, groups=labels, weights={"big": 0.7, "small": 0.3}, context_length=T, batch_size=16, drop_last=False
    )
    assert loader.group_windows == {"big": 200, "small": 11} and loader.num_windows == 211
    assert loader.draws == {"big": 148, "small": 63}  # 147.7 and 63.3; the leftover window goes to 0.7
    rows = np.concatenate(drain(loader, loader.batches_per_epoch))
    assert (loader.epoch, loader.position) == (1, 0)
    first = rows[:, 0]
    big = Counter(first[first // CODE == 1].tolist())
    small = Counter(first[first // CODE == 2].tolist())
    assert sum(big.values()) == 148 and sum(small.values()) == 63
    assert max(big.values()) == 1, "148 of 200 windows: none should repeat"
    # 63 = 5 passes over the 11 windows + 8 more: every window 5 or 6 times, all of them drawn
    assert len(small) == 11 and sorted(Counter(small.values()).items()) == [(5, 3), (6, 8)]


def test_each_epoch_downsamples_a_fresh_subset_and_follows_the_documented_recipe() -> None:
    arrays, labels = grouped(BIG_SMALL)
    loader = make_loader(arrays, groups=labels, weights={"big": 0.7, "small": 0.3}, context_length=T, batch_size=1)
    seen: set[int] = set()
    for epoch in range(10):
        # per group (sorted names): permutations seeded (seed, epoch, index), cycled; then one shuffle (seed, epoch)
        small = np.random.default_rng([0, epoch, 1])
        picks = [
            np.random.default_rng([0, epoch, 0]).permutation(200)[:148],
            200 + np.concatenate([small.permutation(11) for _ in range(6)])[:63],
        ]
        expect = np.random.default_rng([0, epoch]).permutation(np.concatenate(picks))
        np.testing.assert_array_equal(loader.window_order(epoch), expect)
        seen |= {int(i) for i in loader.window_order(epoch) if i < 200}
    assert seen == set(range(200)), "the big group's unpicked windows should come up in later epochs"


def test_zero_weight_group_is_never_drawn() -> None:
    arrays, labels = grouped(BIG_SMALL)
    loader = make_loader(arrays, groups=labels, weights={"big": 0.0, "small": 1.0}, context_length=T, batch_size=8)
    batches = drain(loader, 3 * loader.batches_per_epoch)
    assert not (np.concatenate(batches) // CODE == 1).any()
    assert loader.realized_mixture() == {"big": 0, "small": 3 * loader.batches_per_epoch * 8 * T}


def test_windows_never_cross_a_group_but_run_across_its_arrays() -> None:
    arrays, labels = grouped([("a", 37), ("b", 29), ("a", 63), ("b", 50), ("a", 45), ("b", 23)])
    weighted = make_loader(arrays, groups=labels, weights={"a": 1.0, "b": 1.0}, context_length=T, batch_size=2)
    rows = np.concatenate(drain(weighted, 2 * weighted.batches_per_epoch))
    assert ((rows // CODE) == (rows[:, :1] // CODE)).all(), "a row mixes tokens of two groups"
    np.testing.assert_array_equal(rows, rows[:, :1] + np.arange(T))  # contiguous within the group
    local, bounds = rows[:, :1] % CODE, np.where(rows[:, :1] // CODE == 1, [[37, 100]], [[29, 79]])
    assert ((local < bounds) & (bounds < local + T)).any(), "no row spans two arrays of one group"
    # the same arrays without weights do pack windows across groups, so the check above can fail
    plain = np.concatenate(drain(make_loader(arrays, context_length=T, batch_size=2), weighted.batches_per_epoch))
    assert ((plain // CODE) != (plain[:, :1] // CODE)).any()


def test_two_ranks_draw_disjoint_windows_within_an_epoch() -> None:
    # weights in proportion to the groups' windows (200:11) need no upsampling, so every window is drawn once
    arrays, labels = grouped(BIG_SMALL)
    kw: dict[str, Any] = dict(groups=labels, weights={"big": 200, "small": 11}, context_length=T, batch_size=5)
    ranks = [make_loader(arrays, rank=r, world_size=2, seed=3, **kw) for r in (0, 1)]
    assert ranks[0].windows_per_rank == 105 and ranks[0].batches_per_epoch == 21
    for _ in range(2):
        starts = [np.concatenate(drain(r, r.batches_per_epoch))[:, 0].tolist() for r in ranks]
        assert len(set(starts[0])) == len(starts[0]) == 105 == len(set(starts[1]))
        assert not set(starts[0]) & set(starts[1])
        assert len(set(starts[0]) | set(starts[1])) == 210  # all 211 windows but the dropped tail


def test_resume_mid_epoch_continues_with_the_same_batches_and_mixture() -> None:
    arrays, labels = grouped(BIG_SMALL)
    kw: dict[str, Any] = dict(
        groups=labels, weights={"big": 0.7, "small": 0.3}, context_length=T, batch_size=4, seed=11, world_size=2
    )
    full = make_loader(arrays, rank=1, **kw)
    reference = drain(full, 70)  # 26 batches per epoch: crosses into the third epoch
    first = make_loader(arrays, rank=1, **kw)
    before = drain(first, 33)
    assert first.realized_mixture() == hand_mixture(before, labels)
    state = json.loads(json.dumps(first.state_dict()))
    assert (state["epoch"], state["position"]) == (1, 7)
    resumed = make_loader(arrays, rank=1, **kw)
    resumed.load_state_dict(state)
    assert resumed.realized_mixture() == hand_mixture(before, labels)
    after = drain(resumed, 37)
    for x0, x1 in zip(reference[33:], after, strict=True):
        np.testing.assert_array_equal(x0, x1)
    assert resumed.realized_mixture() == full.realized_mixture() == hand_mixture(reference, labels)
    other_seed = drain(make_loader(arrays, rank=1, **{**kw, "seed": 12}), 5)
    assert not all(np.array_equal(a, b) for a, b in zip(reference, other_seed, strict=False))


def test_load_state_refuses_other_weights_or_groups() -> None:
    arrays, labels = grouped(BIG_SMALL)
    kw: dict[str, Any] = dict(groups=labels, context_length=T, batch_size=4)
    state = make_loader(arrays, weights={"big": 0.7, "small": 0.3}, **kw).state_dict()
    with pytest.raises(ValueError, match=r"weights \{'big': 0.7, 'small': 0.3\} in the saved state but"):
        make_loader(arrays, weights={"big": 0.5, "small": 0.5}, **kw).load_state_dict(state)
    renamed = ["old" if g == "small" else g for g in labels]
    with pytest.raises(ValueError, match="group_windows"):
        make_loader(arrays, **{**kw, "groups": renamed}, weights={"big": 0.7, "old": 0.3}).load_state_dict(state)
    with pytest.raises(
        ValueError, match=r"^loader state does not fit this loader: weights \{.*\} in the saved state but None now"
    ):
        make_loader(arrays, context_length=T, batch_size=4).load_state_dict(state)  # same num_windows, no weights


def test_realized_mixture_without_weights_counts_tokens_per_group() -> None:
    arrays, labels = grouped([("a", 37), ("b", 29), ("a", 63), ("b", 50)])
    loader = make_loader(arrays, groups=labels, context_length=T, batch_size=3, seed=2)
    batches = drain(loader, loader.batches_per_epoch + 2)
    assert loader.realized_mixture() == hand_mixture(batches, labels)
    ungrouped = make_loader(arrays, context_length=T, batch_size=3, seed=2)
    drain(ungrouped, 4)
    assert ungrouped.realized_mixture() == {"all": 4 * 3 * T}


def test_groups_without_weights_change_nothing(tmp_path: Path) -> None:
    arrays, labels = grouped([("a", 37), ("b", 0), ("a", 63), ("b", 50), ("c", 0)])
    logs = tmp_path / "grouped.txt", tmp_path / "plain.txt"
    a = make_loader(arrays, groups=labels, context_length=T, batch_size=3, seed=4)
    b = make_loader(arrays, context_length=T, batch_size=3, seed=4)
    a.log_windows(logs[0])
    b.log_windows(logs[1])
    assert len(a.arrays) == 3 and a.num_windows == b.num_windows == 149 // T
    for x0, x1 in zip(drain(a, 10), drain(b, 10), strict=True):
        np.testing.assert_array_equal(x0, x1)
    assert a.state_dict() == b.state_dict() and "weights" not in a.state_dict()
    assert logs[0].read_text() == logs[1].read_text()
    assert sorted(a.realized_mixture()) == ["a", "b"]  # the empty arrays' labels went with them


@pytest.mark.parametrize(
    ("sizes", "groups", "weights", "match"),
    [
        ([("a", 100), ("b", 100)], ["a"], None, "groups has 1 labels but there are 2 arrays"),
        ([("a", 100), ("b", 100), ("c", 99)], ["a", "b", "c"], {"a": 1.0}, r"no weight for group\(s\) \['b', 'c'\]"),
        ([("a", 100), ("b", 0)], ["a", "b"], {"a": 1.0, "b": 1.0}, r"group\(s\) \['b'\] that have no tokens"),
        ([("a", 100)], ["a"], {"a": 1.0, "z": 0.0}, r"group\(s\) \['z'\] that have no tokens"),
        ([("a", 100), ("b", 100)], ["a", "b"], {"a": 1.0, "b": -0.5}, r"weights \{'b': -0.5\} are not finite"),
        ([("a", 100), ("b", 100)], ["a", "b"], {"a": float("inf"), "b": 1.0}, "not finite numbers >= 0"),
        ([("a", 100), ("b", 100)], ["a", "b"], {"a": 0.0, "b": 0.0}, "all weights are 0"),
        ([("a", 100), ("b", 5)], ["a", "b"], {"a": 1.0, "b": 1.0}, "group 'b' has 5 tokens, fewer than"),
    ],
)
def test_bad_groups_or_weights_name_the_problem(
    sizes: list[tuple[str, int]], groups: list[str] | None, weights: dict[str, float] | None, match: str
) -> None:
    arrays, _ = grouped(sizes)
    with pytest.raises(ValueError, match=match):
        make_loader(arrays, groups=groups, weights=weights, context_length=T, batch_size=2)


def test_missing_and_empty_weights_are_reported_together() -> None:
    arrays, labels = grouped([("a", 100), ("b", 100), ("c", 0)])
    with pytest.raises(ValueError, match=r"no weight for group\(s\) \['b'\].*group\(s\) \['c'\] that have no tokens"):
        make_loader(arrays, groups=labels, weights={"a": 1.0, "c": 1.0}, context_length=T, batch_size=2)
