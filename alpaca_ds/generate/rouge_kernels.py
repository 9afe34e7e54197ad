"""The compiled loops of `RougeIndex` (alpaca_ds/generate/rouge.py): posting lists, bit-parallel LCS, the
is_duplicate filters. The scan behind `query` (every score, top-k, the mean's sum) is rouge_scan.py's.

numba compiles these on first use and caches the machine code next to this file (or in the user's cache when
that folder is read-only), so only the first process after an install pays the compile. Every float they
produce is rouge_score's: scores of instructions of <= 64 tokens are read from rouge.py's table and those of
longer ones use `_f_measure`, which does rouge_l_f's operations in its order (numba, like CPython, rounds each
IEEE operation and never fuses them without fastmath).

Storage, all numpy arrays owned by the index:
  * posting lists in one arena: token t's list is `p_ids[start[t]:start[t] + plen[t]]` (instruction ids,
    ascending) with `p_masks` (the bit masks of t's positions in them) alongside, `cap[t]` slots reserved; a
    full list moves to the arena's end with twice the room (so at most ~3x the live entries are ever held).
    Ids are unsigned so that numba indexes with them without a negative-index check (17% faster).
    Each list is contiguous because the scan over it is the hot loop: fixed-size blocks chained per token
    were 3x slower there (a cache miss per block). `df[t]` counts the instructions containing t (all lengths);
  * the few most frequent tokens ("the", "a", "of", "to": each in over 1/5 of Alpaca's instructions) also get a
    dense column of masks, `dense[slot[t], i]` (0 where t is absent): a step over a whole column vectorises
    (0.25 ns per instruction here) and costs less than the scattered step (1.1-1.3 ns per entry) over a list
    holding more than ~1/5 of the instructions;
  * per instruction `lens` (token count), `short` (the same as uint8, 0 when n > 64) and `tokmat`, its token
    ids padded with -1 (n <= 64);
  * instructions of > 64 tokens in CSR form: `long_ids[k]`, tokens `long_tok[long_start[k]:long_start[k+1]]`;
  * work arrays that are restored before returning: `acc` (zeros), `lut` (zeros, one entry per token id); and
    `touched`, any_above's list of the ids it touches, written one past its last entry (so the per-instruction
    arrays always hold one entry more than there are instructions).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

WORD = 64
ROW = WORD + 1
ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


@intrinsic
def _popcount(typingctx, x):
    """The CPU's popcount instruction (LLVM ctpop); numba has no builtin for it."""

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.int64(types.uint64), codegen


@intrinsic
def _gather8(typingctx, out, table, at, i):
    """out[i + j] = table[at[i + j]] for j < 8 as one vector gather (LLVM's masked gather: one instruction
    with AVX-512, two with AVX2, eight loads elsewhere). LLVM does not vectorise a table lookup into a gather by
    itself here. `out` and `table` are contiguous float64 arrays, `at` a contiguous integer array of 64 bits."""

    def codegen(context, builder, signature, args):
        o, t, a = (context.make_array(ty)(context, builder, v) for ty, v in zip(signature.args[:3], args[:3]))
        i64, f64, i32 = ir.IntType(64), ir.DoubleType(), ir.IntType(32)
        v8i, v8f, v8p = ir.VectorType(i64, 8), ir.VectorType(f64, 8), ir.VectorType(f64.as_pointer(), 8)
        at8 = builder.load(builder.bitcast(builder.gep(a.data, [args[3]]), v8i.as_pointer()), align=8)
        base = builder.insert_element(
            ir.Constant(v8i, ir.Undefined), builder.ptrtoint(t.data, i64), ir.Constant(i32, 0)
        )
        base = builder.shuffle_vector(base, ir.Constant(v8i, ir.Undefined), ir.Constant(ir.VectorType(i32, 8), [0] * 8))
        ptrs = builder.inttoptr(builder.add(base, builder.mul(at8, ir.Constant(v8i, [8] * 8))), v8p)
        gather = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(v8f, [v8p, i32, ir.VectorType(ir.IntType(1), 8), v8f]),
            "llvm.masked.gather.v8f64.v8p0",
        )
        mask = ir.Constant(ir.VectorType(ir.IntType(1), 8), [1] * 8)
        got = builder.call(gather, [ptrs, ir.Constant(i32, 8), mask, ir.Constant(v8f, ir.Undefined)])
        builder.store(got, builder.bitcast(builder.gep(o.data, [args[3]]), v8f.as_pointer()), align=8)
        return context.get_dummy_value()

    return types.void(out, table, at, i), codegen


@njit(cache=True, nogil=True)
def _f_measure(lcs, m, n):
    # rouge_l_f: precision = lcs / prediction (n), recall = lcs / target (m), 0.0 when a side is empty
    if m == 0 or n == 0 or lcs == 0:
        return 0.0
    precision = lcs / n
    recall = lcs / m
    return 2 * precision * recall / (precision + recall)


@njit(cache=True, nogil=True)
def add_postings(
    i, tids, lens, short, tokmat, p_ids, p_masks, top, start, cap, plen, df, lut, slot, dense, n_dense, dense_min
):
    """Add instruction `i` (token ids `tids`, <= 64 of them): its length and tokens, and its entries in its
    tokens' posting lists; returns the new arena top, or -1 (and changes nothing) when the arena has no room for
    the lists that must move. A token in >= dense_min and > 1/5 of the instructions gets a dense column while
    free ones are left."""
    need = 0
    for t in tids:
        if plen[t] == cap[t] and lut[t] == 0:
            need += max(4, 2 * cap[t])
        lut[t] = 1
    for t in tids:
        lut[t] = 0
    if top + need > len(p_ids):
        return -1
    lens[i] = short[i] = len(tids)
    tokmat[i, : len(tids)] = tids
    for j in range(len(tids)):
        lut[tids[j]] |= np.uint64(1) << np.uint64(j)
    for t in tids:
        mask = lut[t]
        if mask == 0:
            continue  # a repeated token, already appended with all its positions
        lut[t] = 0
        df[t] += 1
        if plen[t] == cap[t]:  # full: move the list to the arena's end with twice the room
            new_cap = max(4, 2 * cap[t])
            p_ids[top : top + plen[t]] = p_ids[start[t] : start[t] + plen[t]]
            p_masks[top : top + plen[t]] = p_masks[start[t] : start[t] + plen[t]]
            start[t] = top
            cap[t] = new_cap
            top += new_cap
        p_ids[start[t] + plen[t]] = i
        p_masks[start[t] + plen[t]] = mask
        plen[t] += 1
        if slot[t] >= 0:
            dense[slot[t], i] = mask
        elif plen[t] >= dense_min and 5 * plen[t] > i and n_dense[0] < len(dense):
            slot[t] = n_dense[0]  # a free column left: the token is frequent enough to be scanned densely
            n_dense[0] += 1
            for e in range(start[t], start[t] + plen[t]):
                dense[slot[t], p_ids[e]] = p_masks[e]
    return top


@njit(cache=True, nogil=True)
def _set_lut(q, lut):
    """lut[token] = bit mask of its positions in the query q (<= 64 tokens; -1 = unknown token, skipped)."""
    for j in range(len(q)):
        if q[j] >= 0:
            lut[q[j]] |= np.uint64(1) << np.uint64(j)


@njit(cache=True, nogil=True)
def _clear_lut(q, lut):
    for j in range(len(q)):
        if q[j] >= 0:
            lut[q[j]] = 0


@njit(cache=True, nogil=True)
def _lcs_lut(toks, lut, m):
    """LCS of the query (its positions are the bits of lut, m <= 64) and the token sequence `toks`: Hyyro's
    recurrence fed one token of `toks` at a time; padding (-1) ends the sequence."""
    v = ONES
    for t in toks:
        if t < 0:
            break
        u = v & lut[t]
        v = (v + u) | (v ^ u)
    low = ONES if m == WORD else (np.uint64(1) << np.uint64(m)) - np.uint64(1)
    return _popcount(~v & low)


@njit(cache=True, nogil=True)
def _lcs_dp(a, b):
    """Textbook LCS for the rare pair where both sides exceed 64 tokens."""
    prev = np.zeros(len(b) + 1, dtype=np.int64)
    cur = np.zeros(len(b) + 1, dtype=np.int64)
    for x in a:
        for j in range(len(b)):
            cur[j + 1] = prev[j] + 1 if x == b[j] else max(prev[j + 1], cur[j])
        prev, cur = cur, prev
    return prev[len(b)]


@njit(cache=True, nogil=True)
def _long_lcs(q, k, long_start, long_tok, lut):
    toks = long_tok[long_start[k] : long_start[k + 1]]
    if len(q) <= WORD:
        return _lcs_lut(toks, lut, len(q))
    return _lcs_dp(q, toks)


@njit(cache=True, nogil=True)
def any_above(
    q,
    thr,
    n_total,
    p_ids,
    p_masks,
    start,
    plen,
    df,
    lens,
    tokmat,
    table,
    long_ids,
    long_start,
    long_tok,
    acc,
    touched,
    lut,
    dense,
    slot,
    short,
):
    """Whether some instruction scores > thr against the query q (1..64 tokens, thr >= 0.01): the length,
    prefix and overlap filters of rouge.py's docstring, then the exact score of the survivors."""
    m = len(q)
    tl = thr - 1e-9
    x = tl * m / (2.0 - tl)  # any duplicate has lcs > x and n > x
    n_hi = m * (2.0 - tl) / tl  # and n < n_hi
    need = int(np.floor(x)) + 1  # matched query positions a duplicate needs
    # the distinct known tokens and how often each occurs in the query (lut as a scratch counter)
    uniq = np.empty(m, dtype=np.int64)
    n_uniq = 0
    m_known = 0
    for t in q:
        if t >= 0:
            if lut[t] == 0:
                uniq[n_uniq] = t
                n_uniq += 1
            lut[t] += 1
            m_known += 1
    counts = np.empty(n_uniq, dtype=np.int64)
    for j in range(n_uniq):
        counts[j] = lut[uniq[j]]
        lut[uniq[j]] = 0
    if m_known < need:
        return False  # too few query tokens occur in the index at all
    # whole tokens, rarest first, until m_known - need + 1 positions are covered (pigeonhole)
    order = np.argsort(df[uniq[:n_uniq]], kind="mergesort")
    uniq, counts = uniq[order], counts[order]
    covered = 0
    n_prefix = 0
    while covered < m_known - need + 1:
        covered += counts[n_prefix]
        n_prefix += 1
    rest = m_known - covered
    n_touched = 0
    for j in range(n_prefix):
        t, c = uniq[j], counts[j]
        for e in range(start[t], start[t] + plen[t]):
            i = p_ids[e]
            touched[n_touched] = i  # without a branch: index.add keeps an entry beyond every id
            n_touched += acc[i] == 0
            acc[i] += min(_popcount(p_masks[e]), c)
    # req[n]: the least overlap bound with which an instruction of n tokens may be a duplicate (ROW: none)
    req = np.full(ROW, ROW, dtype=np.int64)
    for length in range(ROW):
        if x < length < n_hi:
            req[length] = int(np.floor(tl * (m + length) / 2.0)) + 1  # 2 * req > tl * (m + length)
    bound = np.empty(n_touched, dtype=np.int64)
    n_pass = 0
    for j in range(n_touched):  # without branches: about 1 in 10 passes
        i = touched[j]
        b = acc[i] + rest
        touched[n_pass] = i
        bound[n_pass] = b
        n_pass += b >= req[short[i]]
        acc[i] = 0
    # the unprobed tokens with a dense column: their overlap with a survivor is read exactly, not assumed
    dense_rows = slot[uniq[n_prefix:]]
    dense_counts = counts[n_prefix:][dense_rows >= 0]
    dense_rows = dense_rows[dense_rows >= 0]
    _set_lut(q, lut)
    found = False
    for j in range(n_pass):
        i = touched[j]
        n = short[i]
        ub = bound[j]
        for k in range(len(dense_rows)):
            c = dense_counts[k]
            ub -= c - min(_popcount(dense[dense_rows[k], i]), c)
        if ub >= req[n] and table[ROW * n + _lcs_lut(tokmat[i], lut, m)] > thr:
            found = True
            break
    for k in range(len(long_ids)):
        n = lens[long_ids[k]]
        if not found and x < n < n_hi:
            found = _f_measure(_long_lcs(q, k, long_start, long_tok, lut), m, n) > thr
    _clear_lut(q, lut)
    return found
