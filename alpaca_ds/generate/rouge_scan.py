"""The scan behind `RougeIndex.query` (alpaca_ds/generate/rouge.py): every instruction's exact score against
the query, the top-k and the sum of the scores, on one thread or two. The storage it reads and the LCS
helpers are rouge_kernels.py's.

The instructions are taken in blocks of ~BLOCK (whole leaves of the pairwise sum), and each block gets all its
work while it is in the core's cache: Hyyro's step for every query token in query order (a cursor per query
position walks the token's posting list), every score gathered from the table, the long instructions' scores, the
top-k and the leaf sums. The block's V words and scores live in two buffers of the scan's own (~17 KB each,
reused block after block), so only the index itself is read from the slower caches: walking the whole index
once per token instead left V, the scores and the dense columns (over 2 MB at 52K instructions) to them
between the passes, and index-sized V and score arrays cost 5-15% more even in blocks (benchmarks/RESULTS.md).

The sum follows numpy's pairwise summation (`_pairwise_plan`), so mean = sum / N is np.mean's float bit for
bit without a second pass over the scores. With two threads each half of the sum's root is scored by one,
with its own top-k; the halves' lists merge with the left one first on equal scores (its ids are smaller).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from alpaca_ds.generate.rouge_kernels import (
    ONES,
    ROW,
    WORD,
    _clear_lut,
    _f_measure,
    _gather8,
    _long_lcs,
    _popcount,
    _set_lut,
)

BLOCK = 2048  # instructions per block: their V words, scores and dense-column slices stay in the core's cache


@njit(cache=True, nogil=True)
def _long_scores(q, lens, long_ids, long_start, long_tok, lut):
    """The exact score of query q against each instruction of > 64 tokens, in long_ids order."""
    m = len(q)
    out = np.empty(len(long_ids))
    if m <= WORD:
        _set_lut(q, lut)
    for k in range(len(long_ids)):
        out[k] = _f_measure(_long_lcs(q, k, long_start, long_tok, lut), m, lens[long_ids[k]])
    if m <= WORD:
        _clear_lut(q, lut)
    return out


@njit(cache=True, nogil=True)
def all_scores(q, n_total, index, table, lut, top, top_f):
    """The exact score of query q against every instruction: top[:k] = ids of the k best (score descending,
    earlier first on ties) and top_f[:k] their scores, k = len(top) >= 1. `index` is the tuple of the index's
    arrays (`_prepare`). Returns (number of top entries filled, the sum of all N scores as np.add.reduce
    computes it over the insertion-ordered list)."""
    args = _prepare(q, index, table, lut)
    state = np.array([0.0, -1.0])  # [entries of top filled, the k-th best score so far (-1.0 until k are held)]
    total = _score_range(0, n_total, args, top, top_f, state)
    return int(state[0]), total


@njit(cache=True, nogil=True, parallel=True)
def all_scores_two_threads(q, n_total, index, table, lut, top, top_f):
    """all_scores with the two halves of the pairwise sum's root scored on two threads (numba's prange), each
    with its own top-k, merged after (a function of its own: only its callers pay numba's parallel compile)."""
    args = _prepare(q, index, table, lut)
    # numpy sums n > 128 floats as its halves' sums added, split at n // 2 down to a multiple of 8 (n <= 128:
    # all on the right, whose sum 0.0 + s is s)
    half = n_total // 2 - (n_total // 2) % 8 if n_total > 128 else 0
    tops, tops_f, states, sums = _halves(len(top))  # (allocated outside: here numba makes np.zeros parallel loops)
    for h in prange(2):
        lo, n = (0, half) if h == 0 else (half, n_total - half)
        sums[h] = _score_range(lo, n, args, tops[h], tops_f[h], states[h])
    # the left half's ids are all smaller: on equal scores its entries come first
    left, right, filled = int(states[0, 0]), int(states[1, 0]), 0
    a = b = 0
    while filled < len(top) and (a < left or b < right):
        if b == right or (a < left and tops_f[0, a] >= tops_f[1, b]):
            top[filled], top_f[filled] = tops[0, a], tops_f[0, a]
            a += 1
        else:
            top[filled], top_f[filled] = tops[1, b], tops_f[1, b]
            b += 1
        filled += 1
    return filled, sums[0] + sums[1]


@njit(cache=True, nogil=True)
def _halves(k):
    """Each half's top-k ids, their scores, its state (all_scores's: entries filled, the k-th best so far) and
    its sum."""
    states = np.empty((2, 2))
    states[:, 0] = 0.0
    states[:, 1] = -1.0
    return np.empty((2, k), dtype=np.int64), np.empty((2, k)), states, np.empty(2)


@njit(cache=True, nogil=True)
def _prepare(q, index, table, lut):
    """The arguments of `_score_range`, with the long instructions' scores. index = (p_ids, p_masks, start,
    plen, slot, dense, lens, short, long_ids, long_start, long_tok), the last three for the instructions of > 64
    tokens; table = the query length's score table."""
    p_ids, p_masks, start, plen, slot, dense, lens, short, long_ids, long_start, long_tok = index
    long_f = _long_scores(q, lens, long_ids, long_start, long_tok, lut)
    return q, p_ids, p_masks, start, plen, slot, dense, short, table, long_ids, long_f


@njit(cache=True, nogil=True)
def _score_range(first, n_range, args, top, top_f, state):
    """Score instructions first .. first + n_range - 1 block by block, as the module docstring says; returns
    the sum of their scores in numpy's pairwise order (top, top_f and state as all_scores's)."""
    q, p_ids, p_masks, start, plen, slot, dense, short, table, long_ids, long_f = args
    if n_range == 0:
        return 0.0
    leaf_lo, leaf_n, program = _pairwise_plan(n_range)
    sums = np.empty(len(leaf_lo))
    hits = np.empty(len(leaf_lo), dtype=np.int64)
    cursor = np.zeros(len(q), dtype=np.int64)  # each query position's place in its token's posting list
    for j in range(len(q)):
        if q[j] >= 0:
            t = q[j]
            cursor[j] = start[t] + np.searchsorted(p_ids[start[t] : start[t] + plen[t]], first)
    next_long = np.searchsorted(long_ids, first)
    # one block's V words and scores (a block is < BLOCK plus one leaf of <= 128), reused block after block
    room = min(BLOCK + 128, n_range)
    vb = np.full(room, ONES)
    fb = np.empty(room)
    a = 0
    while a < len(leaf_lo):
        lo = first + leaf_lo[a]
        b, hi = a, lo
        while b < len(leaf_lo) and hi - lo < BLOCK:
            hi += leaf_n[b]
            b += 1
        for j in range(len(q)):
            t = q[j]
            if t < 0:
                continue  # a token the index has never seen: the identity update everywhere
            if slot[t] >= 0:
                col = dense[slot[t], lo:hi]
                for i in range(hi - lo):  # (vectorises; M = 0 is the identity update)
                    g = vb[i]
                    u = g & col[i]
                    vb[i] = (g + u) | (g ^ u)
                continue
            e, end = cursor[j], start[t] + plen[t]
            while e < end and p_ids[e] < hi:
                i = p_ids[e] - lo
                g = vb[i]
                u = g & p_masks[e]
                vb[i] = (g + u) | (g ^ u)
                e += 1
            cursor[j] = e
        # every score from the table (the bits of V at and above n stay ones: the module docstring of rouge.py):
        # each V word becomes its score's place in the table (vectorised, vpopcntq), the scores are gathered 8 at
        # a time (1.3x the pass as one scalar loop), V goes back to all ones. short[i] is 0 for the instructions
        # of > 64 tokens and for those of no tokens: table[0] = 0.0, then the long ones are set
        sb = short[lo:hi]
        size = hi - lo
        for i in range(size):
            vb[i] = ROW * sb[i] + _popcount(~vb[i])
        for i in range(0, size - size % 8, 8):
            _gather8(fb, table, vb, i)
        for i in range(size - size % 8, size):
            fb[i] = table[vb[i]]
        vb[:size] = ONES
        while next_long < len(long_ids) and long_ids[next_long] < hi:
            fb[long_ids[next_long] - lo] = long_f[next_long]
            next_long += 1
        # the leaves' sums, and which leaves hold a score above the k-th best before this block; then only those
        # leaves go through the top-k, in order, each score checked against the k-th best as it is then (two
        # loops: with the top-k's insertion in the summing loop, though rarely run, that loop took 2.2x as long)
        kth = state[1]
        for c in range(a, b):
            at = first + leaf_lo[c] - lo  # the leaf's place in the block
            sums[c], hits[c] = _leaf_sum_and_hits(fb[at : at + leaf_n[c]], kth)
        for c in range(a, b):
            if hits[c]:
                at = first + leaf_lo[c] - lo
                _top_block(fb[at : at + leaf_n[c]], lo + at, top, top_f, state)
        a = b
    return _pairwise_combine(program, sums)


@njit(cache=True, nogil=True)
def _pairwise_plan(n):
    """numpy's pairwise summation of n floats (np.add.reduce, hence np.mean) as leaves and a program: a block
    of > 128 splits into halves at a multiple of 8, left summed before right; a leaf of <= 128 is summed as
    `_leaf_sum_and_hits` does. Returns the leaves' (start, length) in order and the postfix program combining
    their sums (k >= 0: push leaf k's sum; -1: add the top two). Summing by it gives Alpaca's mean bit for bit
    (tests/unit/generate/test_rouge.py checks it against np.add.reduce on every length below 1,100 and on a few
    up to 100,003)."""
    cap = n // 64 + 1  # leaves hold >= 64 (a half of > 128, split at a multiple of 8) unless n < 64
    out = np.empty(4 * cap, dtype=np.int64)  # (one allocation each: they cost more than the walk for small n)
    leaf_lo, leaf_n, program = out[:cap], out[cap : 2 * cap], out[2 * cap :]
    frames = np.empty((3, 64), dtype=np.int64)  # the stack of blocks, and how many of each one's halves are pushed
    los, ns, halves = frames[0], frames[1], frames[2]
    los[0], ns[0], halves[0] = 0, n, 0
    sp, n_leaves, n_ops = 0, 0, 0
    while sp >= 0:
        lo, size = los[sp], ns[sp]
        if size <= 128 or halves[sp] == 2:
            if size <= 128:
                leaf_lo[n_leaves], leaf_n[n_leaves] = lo, size
                program[n_ops] = n_leaves
                n_leaves += 1
            else:
                program[n_ops] = -1
            n_ops += 1
            sp -= 1
            continue
        n2 = size // 2
        n2 -= n2 % 8
        halves[sp] += 1
        first = halves[sp] == 1
        sp += 1
        los[sp], ns[sp], halves[sp] = (lo, n2, 0) if first else (lo + n2, size - n2, 0)
    return leaf_lo[:n_leaves], leaf_n[:n_leaves], program[:n_ops]


@njit(cache=True, nogil=True)
def _pairwise_combine(program, sums):
    stack = np.empty(64)
    sp = 0
    for op in program:
        if op >= 0:
            stack[sp] = sums[op]
            sp += 1
        else:
            sp -= 1
            stack[sp - 1] = stack[sp - 1] + stack[sp]
    return stack[0]


@njit(cache=True, nogil=True, inline="always")
def _leaf_sum_and_hits(b, kth):
    """(the sum of a block of <= 128 scores b as numpy sums it: 8 lanes, then the rest in order; how many of them
    are above kth). (On a slice with range loops numba drops the negative-index checks.)"""
    n = len(b)
    hit = 0
    for i in range(n):  # (vectorises)
        hit += b[i] > kth
    if n < 8:
        res = 0.0
        for i in range(n):
            res += b[i]
        return res, hit
    r0, r1, r2, r3, r4, r5, r6, r7 = b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
    for j in range(1, n // 8):
        i = 8 * j
        r0 += b[i]
        r1 += b[i + 1]
        r2 += b[i + 2]
        r3 += b[i + 3]
        r4 += b[i + 4]
        r5 += b[i + 5]
        r6 += b[i + 6]
        r7 += b[i + 7]
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(n - n % 8, n):
        res += b[i]
    return res, hit


@njit(cache=True, nogil=True)
def _top_block(b, base, top, top_f, state):
    """Insert the scores b (of instructions base, base + 1, ...) above the k-th best into the top-k, after equal
    scores already held."""
    k = len(top)
    filled = int(state[0])
    for i in range(len(b)):
        s = b[i]
        if s > state[1]:
            p = min(filled, k - 1)
            while p > 0 and top_f[p - 1] < s:
                top[p], top_f[p] = top[p - 1], top_f[p - 1]
                p -= 1
            top[p], top_f[p] = base + i, s
            filled = min(filled + 1, k)
            if filled == k:
                state[1] = top_f[k - 1]
    state[0] = filled
