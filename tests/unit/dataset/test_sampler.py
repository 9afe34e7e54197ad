"""MicroBatchSampler: deterministic, covering, rank-balanced, resumable batches in all three modes.

Run: /work/venv/bin/pytest tests/test_sampler.py -q

The properties are checked against what distributed training needs rather than against the sampler's own
arithmetic: every rank must see the same number of full micro-batches (or collective ops deadlock), the ranks
together must cover the epoch (each example once, plus at most one global step's worth of wrap-around fill, as
torch's DistributedSampler does), and a resumed run must continue exactly where the interrupted one stopped.
`pack` is compared with a naive best-fit-decreasing written here and with next-fit / volume bounds.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import islice

import numpy as np
import pytest

from alpaca_ds.common.errors import UserError
from alpaca_ds.config import load_config
from alpaca_ds.dataset import build
from alpaca_ds.dataset.config import DataBuildConfig
from alpaca_ds.dataset.sampler import MODES, MicroBatchSampler, pack
from alpaca_ds.dataset.shards import TokenizedDataset

# --------------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def sample_lengths(tmp_path_factory) -> np.ndarray:
    """Token lengths of the project's 120-record sample, built with the shipped tiny tokenizer."""
    out = tmp_path_factory.mktemp("tokenized")
    build.run(
        load_config(
            DataBuildConfig, None, [f"output={out}", "workers=1", "val_fraction=0"], defaults=build.default_config()
        )
    )
    lengths = np.asarray(TokenizedDataset(out).lengths, dtype=np.int64)
    assert len(lengths) == 120 and lengths.min() > 0
    return lengths


def lognormal_lengths(n: int, seed: int = 0, high: int = 1024) -> np.ndarray:
    """Alpaca-like length distribution: most examples short, a long tail."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(5.0, 0.7, n).astype(np.int64), 4, high)


def samplers(lengths, micro, world, mode, seed=0, **kw) -> list[MicroBatchSampler]:
    return [
        MicroBatchSampler(lengths, micro, world_size=world, rank=r, seed=seed, mode=mode, **kw) for r in range(world)
    ]


def mode_kwargs(mode: str, lengths: np.ndarray) -> dict:
    return {"pack_length": max(512, int(lengths.max()))} if mode == "packed" else {}


def global_steps(per_rank: list[list[list[list[int]]]]) -> list[list[list[int]]]:
    """Rows of each global step, rank 0's micro-batch first (the order the ranks' slices interleave in)."""
    return [[row for batches in per_rank for row in batches[s]] for s in range(len(per_rank[0]))]


# --------------------------------------------------------------------------------------------------- coverage


def check_epoch(lengths: np.ndarray, micro: int, world: int, mode: str, epoch: int = 0, **kw) -> None:
    n, step = len(lengths), micro * world
    where = f"mode={mode} world={world} micro={micro} n={n} {kw}"
    ranks = samplers(lengths, micro, world, mode, seed=7, **kw)
    per_rank = []
    for s in ranks:
        s.set_epoch(epoch)
        batches = s.epoch_batches(epoch)
        assert list(iter(s)) == batches, where  # iterating yields exactly the epoch's batches
        assert len(s) == len(batches), where
        per_rank.append(batches)

    # Same number of micro-batches on every rank, each one full: otherwise ranks deadlock in collectives (or the
    # global batch stops being micro x world).
    assert len({len(b) for b in per_rank}) == 1, f"{where}: ranks get {[len(b) for b in per_rank]} micro-batches"
    sizes = Counter(len(batch) for b in per_rank for batch in b)
    assert set(sizes) == {micro}, f"{where}: micro-batch sizes {dict(sizes)}"

    steps = global_steps(per_rank)
    rows = [row for st in steps for row in st]
    for row in rows:
        assert len(row) >= 1 and len(set(row)) == len(row), where
        assert all(isinstance(i, int) and 0 <= i < n for i in row), where
        if mode == "packed":
            assert int(lengths[row].sum()) <= kw["pack_length"], f"{where}: row of {lengths[row].sum()} tokens"
        else:
            assert len(row) == 1, f"{where}: a padded-mode row holds {len(row)} examples"

    # The distinct rows partition the dataset: every example exactly once ...
    distinct = list(dict.fromkeys(tuple(r) for r in rows))
    flat = sorted(i for r in distinct for i in r)
    assert flat == list(range(n)), f"{where}: examples missing or split across rows"
    # ... and the rest is wrap-around fill: fewer than one global step of repeated rows, and only as many as
    # needed to complete the last step.
    repeats = len(rows) - len(distinct)
    assert 0 <= repeats <= step - 1, f"{where}: {repeats} repeated rows"
    assert len(rows) == math.ceil(len(distinct) / step) * step, where
    counts = Counter(i for r in rows for i in r)
    assert min(counts.values()) >= 1
    assert sum(counts.values()) - n == sum(len(r) * (c - 1) for r, c in Counter(map(tuple, rows)).items()), where
    if mode != "packed":
        assert sum(counts.values()) - n <= step - 1, where

    # Within a global step the ranks' rows are disjoint except for the fill.
    within = sum(len(flat_step) - len(set(flat_step)) for flat_step in ([i for r in st for i in r] for st in steps))
    assert within <= sum(counts.values()) - n, where
    if mode in ("random", "packed"):
        # The fill wraps around to the epoch's start, so it lives in the last step only.
        d = len(distinct)
        assert [tuple(r) for r in rows[:d]] == distinct, where
        assert rows[d:] == rows[: len(rows) - d], where
        for st in steps[:-1]:
            ex = [i for r in st for i in r]
            assert len(ex) == len(set(ex)), f"{where}: ranks overlap inside a step"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("data", ["sample", "lognormal-101"])
def test_epoch_covers_every_example_with_balanced_ranks(mode, data, sample_lengths):
    lengths = sample_lengths if data == "sample" else lognormal_lengths(101, seed=1)
    for world in (1, 2, 3, 4):
        for micro in (1, 2, 3, 4, 5):
            check_epoch(lengths, micro, world, mode, epoch=world + micro, **mode_kwargs(mode, lengths))


@pytest.mark.parametrize("mode", MODES)
def test_coverage_with_small_length_groups_and_pack_windows(mode):
    """Several megabatches (length_grouped) / several packing windows (packed)."""
    lengths = lognormal_lengths(157, seed=2)
    kw = {"group_steps": 2} if mode == "length_grouped" else {"pack_window": 16} if mode == "packed" else {}
    kw.update(mode_kwargs(mode, lengths))
    for world, micro in ((1, 1), (2, 3), (3, 2), (4, 5)):
        check_epoch(lengths, micro, world, mode, **kw)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n, world, micro", [(7, 4, 5), (1, 2, 2), (3, 4, 1), (5, 3, 4)])
def test_fewer_rows_than_one_global_step(mode, n, world, micro):
    """A dataset (or a packed dataset's row count) smaller than half a global step: e.g. a small validation
    split, or the 120-record sample packed into 2048-token rows on 8 ranks. Every rank must still get the same
    number of full micro-batches and every example must be covered (DistributedSampler repeats the indices as
    often as needed to fill the step)."""
    lengths = lognormal_lengths(n, seed=3, high=300)
    check_epoch(lengths, micro, world, mode, **mode_kwargs(mode, lengths))


def test_packed_sample_on_many_ranks_stays_balanced(sample_lengths):
    """The realistic case of the above: the 120-record sample packed into 2048-token rows (~12 rows) on
    8 ranks x micro 4 = 32 rows per global step."""
    check_epoch(sample_lengths, 4, 8, "packed", pack_length=2048)


# --------------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_and_epoch_same_batches_other_epoch_or_seed_differs(mode, sample_lengths):
    kw = mode_kwargs(mode, sample_lengths)
    a = MicroBatchSampler(sample_lengths, 3, world_size=2, rank=1, seed=11, mode=mode, **kw)
    b = MicroBatchSampler(sample_lengths, 3, world_size=2, rank=1, seed=11, mode=mode, **kw)
    # b first looks at other epochs, so a cached result from another epoch cannot leak in.
    b.epoch_batches(5)
    b.epoch_batches(1)
    assert a.epoch_batches(0) == b.epoch_batches(0)
    for epoch in (1, 2):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b)
    assert a.epoch_batches(0) != a.epoch_batches(1)
    assert a.epoch_batches(1) != a.epoch_batches(2)
    c = MicroBatchSampler(sample_lengths, 3, world_size=2, rank=1, seed=12, mode=mode, **kw)
    assert c.epoch_batches(0) != a.epoch_batches(0)
    # The order is actually shuffled, not the dataset order.
    flat = [i for batch in a.epoch_batches(0) for row in batch for i in row]
    assert flat != sorted(flat)


@pytest.mark.parametrize("mode", MODES)
def test_ranks_agree_on_the_global_order(mode, sample_lengths):
    """Ranks compute the global order independently; with the same seed they must take complementary slices."""
    kw = mode_kwargs(mode, sample_lengths)
    one = MicroBatchSampler(sample_lengths, 6, world_size=1, rank=0, seed=3, mode=mode, **kw).epoch_batches(0)
    two = [s.epoch_batches(0) for s in samplers(sample_lengths, 3, 2, mode, seed=3, **kw)]
    # World 2 x micro 3 and world 1 x micro 6 share a global step of 6 rows, hence the same global order.
    assert [row for batch in one for row in batch] == [row for st in global_steps(two) for row in st]


# --------------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("mode", MODES)
def test_resume_mid_epoch_continues_exactly(mode, sample_lengths):
    kw = mode_kwargs(mode, sample_lengths)

    def make():
        return MicroBatchSampler(sample_lengths, 2, world_size=3, rank=1, seed=5, mode=mode, **kw)

    reference = make()
    reference.set_epoch(3)
    full = list(reference)
    assert len(full) >= 4
    for k in sorted({0, 1, 2, len(full) // 2, len(full) - 1, len(full)}):
        first = make()
        first.set_epoch(3)
        head = list(islice(iter(first), k))
        state = json.loads(json.dumps(first.state_dict()))  # as stored in a checkpoint
        resumed = make()  # a fresh process: epoch 0, position 0, empty cache
        resumed.load_state_dict(state)
        resumed.set_epoch(3)  # a training loop's `for epoch ...: set_epoch(epoch)` must not restart the epoch
        tail = list(resumed)
        assert head + tail == full, f"k={k}"
        assert resumed.state_dict()["position"] == len(full)
        # the interrupted sampler itself also continues where it stopped
        assert head + list(first) == full, f"k={k}"
    # a new epoch starts from its beginning
    resumed.set_epoch(4)
    assert list(resumed) == resumed.epoch_batches(4) and len(resumed.epoch_batches(4)) == len(full)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 6},
        {"mode": "length_grouped"},
        {"mode": "packed"},
        {"world_size": 2, "rank": 0},
        {"micro_batch_size": 3},
    ],
)
def test_resume_refuses_a_state_from_other_settings(change, sample_lengths):
    base = {"micro_batch_size": 2, "world_size": 3, "rank": 1, "seed": 5, "mode": "random"}
    first = MicroBatchSampler(sample_lengths, **base)
    list(islice(iter(first), 3))
    state = first.state_dict()
    other = {**base, **change}
    if other["mode"] == "packed":
        other["pack_length"] = int(sample_lengths.max())
    resumed = MicroBatchSampler(sample_lengths, **other)
    with pytest.raises(UserError) as e:
        resumed.load_state_dict(state)
    key = next(k for k in change if k != "rank")
    assert key in str(e.value)
    # a matching state is accepted
    same = MicroBatchSampler(sample_lengths, **base)
    same.load_state_dict(state)
    assert same.state_dict() == state


# --------------------------------------------------------------------------------------------------- packing


def naive_best_fit_decreasing(items: list[int], lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """O(n^2) reference: longest first, into the row with the least free space that still fits."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(items, key=lambda i: -int(lengths[i])):
        need = int(lengths[i])
        fits = [r for r in range(len(rows)) if free[r] >= need]
        if fits:
            r = min(fits, key=lambda r: free[r])
            rows[r].append(i)
            free[r] -= need
        else:
            rows.append([i])
            free.append(capacity - need)
    return rows


def next_fit_rows(sizes: list[int], capacity: int) -> int:
    rows, used = 0, capacity + 1
    for s in sizes:
        if used + s > capacity:
            rows, used = rows + 1, 0
        used += s
    return rows


def test_pack_against_brute_force_checks():
    rng = np.random.default_rng(123)
    for trial in range(400):
        capacity = int(rng.integers(1, 300))
        pool = rng.integers(1, capacity + 1, size=int(rng.integers(1, 120)))
        if trial % 3 == 0:  # many equal lengths: ties everywhere
            pool = rng.choice([capacity, max(1, capacity // 2), max(1, capacity // 3)], size=len(pool))
        lengths = np.asarray(pool, dtype=np.int64)
        # a random subset in random order, as a packing window of a permutation is
        indices = rng.permutation(len(lengths))[: int(rng.integers(0, len(lengths) + 1))]
        rows = pack(indices, lengths, capacity)
        where = f"trial {trial}: capacity {capacity}, lengths {lengths[indices].tolist()}"

        assert sorted(i for r in rows for i in r) == sorted(indices.tolist()), where
        assert all(r for r in rows), where
        sums = [int(lengths[r].sum()) for r in rows]
        assert max(sums, default=0) <= capacity, where
        total = int(lengths[indices].sum())
        assert len(rows) >= math.ceil(total / capacity), where
        decreasing = sorted(lengths[indices].tolist(), reverse=True)
        assert len(rows) <= next_fit_rows(decreasing, capacity), where
        assert len(rows) <= next_fit_rows(lengths[indices].tolist(), capacity), where
        # any-fit: a row is opened only when no open row has room, so no two rows could be merged
        for a in range(len(sums)):
            for b in range(a + 1, len(sums)):
                assert sums[a] + sums[b] > capacity, f"{where}: rows {a} and {b} fit together"
        # the same decisions as a naive best-fit-decreasing (ties may go to either row: compare the fill levels)
        ref = naive_best_fit_decreasing(indices.tolist(), lengths, capacity)
        assert sorted(sums) == sorted(int(lengths[r].sum()) for r in ref), where


def test_pack_fills_rows_well_on_alpaca_like_lengths():
    lengths = lognormal_lengths(3000, seed=4)
    for capacity in (1024, 2048):
        rows = pack(np.random.default_rng(0).permutation(len(lengths)), lengths, capacity)
        assert len(rows) <= math.ceil(lengths.sum() / capacity) * 1.02 + 1


def test_packed_refuses_a_pack_length_shorter_than_the_longest_example(sample_lengths):
    longest = int(sample_lengths.max())
    with pytest.raises(UserError):
        MicroBatchSampler(sample_lengths, 2, mode="packed", pack_length=longest - 1)
    with pytest.raises(UserError):
        MicroBatchSampler(sample_lengths, 2, mode="packed", pack_length=None)
    with pytest.raises(UserError):
        MicroBatchSampler(sample_lengths, 2, mode="bucketed")
    s = MicroBatchSampler(sample_lengths, 2, mode="packed", pack_length=longest)
    assert all(int(sample_lengths[row].sum()) <= longest for batch in s.epoch_batches(0) for row in batch)


@pytest.mark.parametrize("pack_length", [512, 1024])
def test_packed_rows_fit_and_hold_each_example_once(sample_lengths, pack_length):
    for world, micro in ((1, 2), (2, 2), (3, 1)):
        ranks = samplers(sample_lengths, micro, world, "packed", seed=9, pack_length=pack_length)
        rows = [row for s in ranks for batch in s.epoch_batches(0) for row in batch]
        assert all(int(sample_lengths[r].sum()) <= pack_length for r in rows)
        distinct = {tuple(r) for r in rows}
        ex = [i for r in distinct for i in r]
        assert sorted(ex) == list(range(len(sample_lengths)))
        # packing saves work: far fewer rows than examples, close to the volume bound
        assert len(distinct) <= 1.15 * math.ceil(sample_lengths.sum() / pack_length) + 1
        assert len(distinct) < len(sample_lengths) / 2


# --------------------------------------------------------------------------------------------------- length grouping


def mean_step_spread(lengths, micro, world, mode, seeds=range(4), **kw) -> tuple[float, int]:
    """Mean (max - min) length within a global step, and the padding tokens of pad-to-longest micro-batches."""
    spreads, padding = [], 0
    for seed in seeds:
        per_rank = [s.epoch_batches(0) for s in samplers(lengths, micro, world, mode, seed=seed, **kw)]
        for st in global_steps(per_rank):
            ls = [int(lengths[r[0]]) for r in st]
            spreads.append(max(ls) - min(ls))
        for batches in per_rank:
            for batch in batches:
                ls = [int(lengths[r[0]]) for r in batch]
                padding += max(ls) * len(ls) - sum(ls)
    return float(np.mean(spreads)), padding


@pytest.mark.parametrize("data, world, micro", [("sample", 2, 4), ("lognormal", 4, 4), ("lognormal", 1, 8)])
def test_length_grouped_steps_are_homogeneous(data, world, micro, sample_lengths):
    lengths = sample_lengths if data == "sample" else lognormal_lengths(3000, seed=5)
    random_spread, random_pad = mean_step_spread(lengths, micro, world, "random")
    grouped_spread, grouped_pad = mean_step_spread(lengths, micro, world, "length_grouped")
    assert grouped_spread < 0.25 * random_spread, (grouped_spread, random_spread)
    assert grouped_pad < 0.25 * random_pad, (grouped_pad, random_pad)


def test_length_grouped_keeps_the_order_of_steps_random():
    lengths = lognormal_lengths(2000, seed=6)
    means = []
    for epoch in (0, 1):
        per_rank = [s.epoch_batches(epoch) for s in samplers(lengths, 4, 2, "length_grouped", seed=1)]
        means.append([np.mean([lengths[r[0]] for r in st]) for st in global_steps(per_rank)])
    for m in means:
        # not sorted by length across the epoch: rank correlation of step order and step length is weak
        ranks = np.argsort(np.argsort(m))
        rho = np.corrcoef(ranks, np.arange(len(m)))[0, 1]
        assert abs(rho) < 0.3, rho
    assert means[0] != means[1]
