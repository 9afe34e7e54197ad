"""ROUGE-L de-duplication of self-instruct instructions, exact to rouge_score and fast at 52K scale.

Alpaca's generator (generate_instruction.py) tokenizes every new instruction with rouge_score's default
tokenizer, scores it with `rouge_scorer._score_lcs(new_tokens, existing_tokens)` against *every* seed and
already-accepted instruction, drops it when `max(scores) > 0.7`, and otherwise keeps, as metadata, the 10 most
similar instructions with their scores and `np.mean(scores)`. That is N pure-Python LCS tables per candidate
(~20 us each): about 8 hours of CPU for a 52K run. `RougeIndex` returns the same numbers in well under a
millisecond per candidate:

    index = RougeIndex(threshold=0.7, top_k=10)
    for seed in seed_instructions:
        index.add(seed)
    for record in candidates:
        match = index.query(record["instruction"])
        if match.max_score > index.threshold:
            continue                                  # rejected, exactly as Alpaca decides
        record["most_similar_instructions"] = dict(match.top)
        record["avg_similarity_score"] = match.mean
        index.add(record["instruction"])

`is_duplicate(text)` answers only the decision (with filters, see below); when the metadata of accepted
instructions is wanted anyway, call `query` alone: it decides with the same exactness.

    /work/venv/bin/python benchmarks/bench_rouge.py     # speed and exactness against brute-force rouge_score

What "exact" means (tests/test_rouge.py checks each point against rouge_score itself):
  * tokens are rouge_score's DefaultTokenizer(use_stemmer=False) tokens (see `tokenize`);
  * every score is the float rouge_score computes, bit for bit: precision = lcs/len(existing) (the
    "prediction" in Alpaca's call), recall = lcs/len(new) (the "target"), F = 2*p*r/(p+r) in the order of
    operations of `rouge_score.scoring.fmeasure`, and 0.0 when either token list is empty. (F is symmetric bit
    for bit anyway: 2*p is exact, and * and + commute in IEEE arithmetic.)
  * `max_score`, the duplicate decision (`max_score > threshold`) and the top-k scores are therefore identical
    to brute force. Top-k ties are broken by insertion order (earlier first); instructions that share no token
    with the query score 0.0 and fill the list after the positive ones, earliest first (Alpaca's argsort over
    all scores lists zero scores too when fewer than 10 are positive).
  * `mean` is np.mean over the scores against all N added texts, zeros included, computed from the same
    insertion-ordered float64 array Alpaca's np.mean(list) builds, so it is Alpaca's value bit for bit.

How `query` avoids N LCS tables — a bit-parallel LCS (Allison-Dix / Hyyro) for all N instructions at once:
  For an existing instruction B of n <= 64 tokens keep a 64-bit word V = all ones and, for each token a of the
  query in order, with M = the bit mask of the positions of a in B:
        U = V & M;   V = (V + U) | (V ^ U)          (V ^ U == V & ~M because U is a subset of V)
  Afterwards LCS(query, B) = the number of zero bits among the low n bits of V. Carries only move towards
  higher bits, so bits at and above n never disturb the low n bits and need no masking until the popcount.
  If M == 0 the update is the identity (U = 0), so a step only touches the instructions that contain token a:
  an inverted index maps each token to the (ids, masks) of the instructions containing it, and one step is a
  gather, four vectorised integer ops and a scatter over that posting list. The work per query is the sum of
  the posting-list lengths of its tokens (~1.3 N for Alpaca's instructions, mostly "the", "a", "of"), with no
  per-pair Python, and it yields the exact LCS of *every* pair (LCS 0 for pairs sharing no token).
  Scores then come from a table: F depends only on (lcs, n) for a fixed query length m, so the 65 x 65 table
  of rouge_score's floats is built once per m (same float operations, so same bits) and the N scores are one
  gather `table[65*n + lcs]`. The exact max, top-k and mean all come from that array, which is why the mean is
  on by default: `compute_mean=False` only skips one O(N) summation and leaves `Match.mean` as None.
  Instructions longer than 64 tokens (7 of Alpaca's 52,002) do not fit a word; they are kept aside and run
  through the same recurrence on Python's arbitrary-precision ints.

How `is_duplicate` prunes (only max_score > threshold is needed). Let t' = threshold - 1e-9: rouge_score's
float F is within a few ulps of the real 2*lcs/(m+n) (m query tokens, n existing tokens), far inside the
1e-9 margin, so every duplicate has 2*lcs > t'*(m+n) in real arithmetic (the margin also absorbs the rounding
of evaluating the bounds below in floats). Hence:
  * length bound: lcs <= min(m, n) gives  t'*m/(2-t') < n < m*(2-t')/t';
  * count bound: lcs <= n gives lcs > x = t'*m/(2-t'), so at least L = floor(x)+1 query positions are
    matched, all to tokens the index has seen ("known" positions);
  * prefix filter: any m_known - L + 1 known positions include a matched one (pigeonhole), so a duplicate
    contains one of those tokens. Taking whole tokens, rarest first (document frequency), until that many
    positions are covered keeps the probed posting lists short; only instructions on them are candidates;
  * overlap bound: lcs <= multiset overlap <= po + s, where po = sum over the probed tokens of
    min(count in query, count in B) (read from the posting masks) and s = the known positions not probed;
    a candidate survives only if 2*(po + s) > t'*(m+n);
  * the survivors get the exact LCS, vectorised over them with the roles swapped (the query's positions are
    the bits, each survivor's tokens are fed column by column), and the exact rouge_score float is compared.
  An exact token-sequence repeat (score 1.0) is answered from a hash set first. A query longer than 64 tokens
  or a threshold below 0.01 (where the prefix is the whole query anyway) goes through `query`.

Tokenization: rouge_score's tokenizer lower-cases, replaces every run of characters outside [a-z0-9] with a
space, splits on whitespace and keeps the tokens matching ^[a-z0-9]+$. After that substitution only [a-z0-9]
runs and spaces remain, so it is exactly `re.findall("[a-z0-9]+", text.lower())`, which `tokenize` does
without importing rouge_score or nltk at run time. Non-ASCII letters are dropped ("café" -> ["caf"]) except
where str.lower() itself yields ASCII (the Kelvin sign lowers to "k"), exactly as in rouge_score.

This module imports numpy only (no torch, no rouge_score).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

__all__ = ["Match", "RougeIndex", "tokenize", "rouge_l_f"]

_TOKEN_RE = re.compile(r"[a-z0-9]+")
_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_WORD = 64                  # instructions of <= 64 tokens live in one machine word per bit-parallel step
_ROW = _WORD + 1            # score table row length: lcs in 0..64
_MIN_PREFIX_THRESHOLD = 0.01  # below this the prefix filter would probe (almost) everything: use query()
_SLACK = 1e-9               # real-valued bounds are loosened by this so float rounding can never prune a duplicate
_TOPK_CUTS = (0.5, 0.25)    # top-k looks among scores >= these first (cheap), then among all


def tokenize(text: str) -> list[str]:
    """rouge_score's DefaultTokenizer(use_stemmer=False).tokenize(text), re-expressed (see module docstring)."""
    return _TOKEN_RE.findall(text.lower())


def rouge_l_f(lcs: int, target_len: int, prediction_len: int) -> float:
    """rouge_score's rougeL F-measure from an LCS length, with its exact float operations (0.0 if a side is empty)."""
    if not target_len or not prediction_len:
        return 0.0
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _score_table(m: int) -> np.ndarray:
    """table[65*n + lcs] = rouge_l_f(lcs, m, n) for n, lcs in 0..64, with the same float operations."""
    lcs = np.arange(_ROW, dtype=np.float64)[None, :]
    n = np.arange(_ROW, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = lcs / n
        recall = lcs / m
        table = 2 * precision * recall / (precision + recall)
    table[0, :] = 0.0   # empty existing text
    table[:, 0] = 0.0   # lcs 0 (p + r == 0)
    table[np.isnan(table)] = 0.0
    return np.ascontiguousarray(table.ravel())


@dataclass(frozen=True)
class Match:
    max_score: float                     # exact max rougeL F over all added texts (0.0 if none)
    top: list[tuple[str, float]]         # exact top-k (text, score), score descending, ties broken by insertion order
    mean: float | None                   # mean score over all added texts, or None when not computed


class _Grow:
    """An append-only 1-D numpy array with amortised O(1) appends; `buf[:n]` is the filled part."""

    __slots__ = ("buf", "n")

    def __init__(self, dtype, capacity: int = 4):
        self.buf = np.empty(capacity, dtype=dtype)
        self.n = 0

    def append(self, value) -> None:
        if self.n == len(self.buf):
            self.buf = np.concatenate([self.buf, np.empty_like(self.buf)])
        self.buf[self.n] = value
        self.n += 1


class _Postings:
    """The instructions (of <= 64 tokens) containing one token: ids (ascending) and bit masks of its positions."""

    __slots__ = ("ids", "masks", "_view")

    def __init__(self):
        self.ids = _Grow(np.intp)
        self.masks = _Grow(np.uint64)
        self._view = None

    def append(self, i: int, mask: int) -> None:
        self.ids.append(i)
        self.masks.append(mask)
        self._view = None

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, masks) without copying; cached until the next append (slicing costs as much as a small step)."""
        if self._view is None:
            self._view = (self.ids.buf[: self.ids.n], self.masks.buf[: self.masks.n])
        return self._view


class RougeIndex:
    """Exact rougeL F (rouge_score, no stemmer) of a query against every added instruction.

    threshold: a query is a duplicate when its max score is strictly greater (Alpaca: 0.7); in [0, 1].
    top_k: how many most-similar instructions `query` returns (Alpaca: 10).
    compute_mean: whether `query` fills `Match.mean` (Alpaca's avg_similarity_score). The mean is exact and
        cheap — all N scores come out of the same pass (see the module docstring) — so it is on by default;
        False skips one O(N) summation per query and leaves `mean` as None.
    An empty index answers max_score 0.0, top [] and mean 0.0 (or None). Adding the same text twice indexes it
    twice, as Alpaca's lists would. Not thread-safe (queries share work buffers); use one index per thread.
    """

    def __init__(self, threshold: float = 0.7, top_k: int = 10, compute_mean: bool = True):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        self.threshold = float(threshold)
        self.top_k = int(top_k)
        self.compute_mean = bool(compute_mean)
        self._texts: list[str] = []
        self._vocab: dict[str, int] = {}            # token -> token id
        self._postings: list[_Postings] = []        # by token id (instructions of <= 64 tokens only)
        self._df: list[int] = []                    # by token id: instructions containing it (all lengths)
        self._long: list[tuple[int, int, dict[int, int]]] = []  # (id, n, token id -> position mask), n > 64
        self._seen: set[tuple[str, ...]] = set()    # token sequences added (an exact repeat scores 1.0)
        self._tables: dict[int, np.ndarray] = {}    # query length -> score table
        # per instruction, sized to the capacity (grown by doubling in _grow)
        self._cap = 0
        self._lens = np.empty(0, dtype=np.intp)     # token count
        self._base = np.empty(0, dtype=np.intp)     # 65 * n (0 for n > 64: their scores are patched in)
        self._low = np.empty(0, dtype=np.uint64)    # (1 << n) - 1 (0 for n > 64)
        self._tokmat = np.empty((0, _WORD), dtype=np.int32)  # token ids, padded with -1 (n <= 64)
        # work arrays; _v is all ones between queries
        self._v = np.empty(0, dtype=np.uint64)
        self._z = self._v
        self._c = np.empty(0, dtype=np.uint8)
        self._key = np.empty(0, dtype=np.intp)
        self._f = np.empty(0, dtype=np.float64)
        self._acc = np.empty(0, dtype=np.uint8)
        # by token id, plus spare entries that stay 0 (index -1, the token matrix padding, reads one)
        self._lut = np.zeros(1024, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def texts(self) -> list[str]:
        """The added texts in insertion order (do not modify)."""
        return self._texts

    # ------------------------------------------------------------------ adding

    def add(self, text: str) -> None:
        """Index an accepted (or seed) instruction."""
        tokens = tokenize(text)
        i = len(self._texts)
        n = len(tokens)
        if i == self._cap:
            self._grow()
        tids = []
        for tok in tokens:
            tid = self._vocab.get(tok)
            if tid is None:
                tid = len(self._postings)
                self._vocab[tok] = tid
                self._postings.append(_Postings())
                self._df.append(0)
            tids.append(tid)
        if len(self._lut) < len(self._postings) + 1:
            # all zero at rest, so nothing to copy
            self._lut = np.zeros(max(2 * len(self._lut), len(self._postings) + 1024), dtype=np.uint64)
        masks: dict[int, int] = {}
        for j, tid in enumerate(tids):
            masks[tid] = masks.get(tid, 0) | (1 << j)
        for tid in masks:
            self._df[tid] += 1
        self._lens[i] = n
        if n <= _WORD:
            for tid, mask in masks.items():
                self._postings[tid].append(i, mask)
            self._base[i] = _ROW * n
            self._low[i] = (1 << n) - 1
            self._tokmat[i, :n] = tids
        else:
            self._long.append((i, n, masks))
            self._base[i] = 0
            self._low[i] = 0
        self._texts.append(text)
        if tokens:
            self._seen.add(tuple(tokens))

    def _grow(self) -> None:
        old, cap = self._cap, max(1024, 2 * self._cap)

        def grown(arr, fill=None):
            new = np.empty((cap,) + arr.shape[1:], dtype=arr.dtype) if fill is None else \
                np.full((cap,) + arr.shape[1:], fill, dtype=arr.dtype)
            new[:old] = arr[:old]
            return new

        self._lens, self._base, self._low = grown(self._lens), grown(self._base), grown(self._low)
        self._tokmat = grown(self._tokmat, -1)
        self._v = np.full(cap, _ONES, dtype=np.uint64)
        self._z = np.empty(cap, dtype=np.uint64)
        self._c = np.empty(cap, dtype=np.uint8)
        self._key = np.empty(cap, dtype=np.intp)
        self._f = np.empty(cap, dtype=np.float64)
        self._acc = np.zeros(cap, dtype=np.uint8)   # overlap counts <= 64
        self._cap = cap

    # ------------------------------------------------------------------ exact scores

    def _table(self, m: int) -> np.ndarray:
        table = self._tables.get(m)
        if table is None:
            table = _score_table(m)
            if m <= 256:           # 34 KB each; a freak query length is not worth keeping
                self._tables[m] = table
        return table

    def _long_scores(self, tids: list[int | None], n_lo: float = -1.0, n_hi: float = math.inf):
        """(id, exact score) of the instructions of > 64 tokens with n_lo < n < n_hi: Hyyro on Python ints."""
        m = len(tids)
        for i, n, masks in self._long:
            if not n_lo < n < n_hi:
                continue
            full = (1 << n) - 1
            v = full
            for tid in tids:
                bits = masks.get(tid, 0) if tid is not None else 0
                if bits:
                    u = v & bits
                    v = ((v + u) | (v ^ u)) & full
            yield i, rouge_l_f(n - v.bit_count(), m, n)

    def _all_scores(self, tokens: list[str]) -> np.ndarray:
        """The exact score of `tokens` (non-empty) against every added instruction, in insertion order."""
        n_total = len(self._texts)
        tids = [self._vocab.get(tok) for tok in tokens]
        v, postings = self._v, self._postings
        for tid in tids:
            if tid is None:
                continue  # a token the index has never seen: M = 0 everywhere, the identity update
            idx, mask = postings[tid].view()
            g = v[idx]              # (an empty posting list, a token only long texts have, is a no-op)
            u = g & mask
            s = g + u
            g ^= u
            g |= s
            v[idx] = g
        vn = v[:n_total]
        z = np.invert(vn, out=self._z[:n_total])
        np.bitwise_and(z, self._low[:n_total], out=z)          # zero bits of V among the low n = LCS
        lcs = np.bitwise_count(z, out=self._c[:n_total])
        vn.fill(_ONES)                                           # ready for the next query
        key = np.add(self._base[:n_total], lcs, out=self._key[:n_total])
        f = self._table(len(tokens)).take(key, out=self._f[:n_total], mode="clip")
        if self._long:
            for i, score in self._long_scores(tids):
                f[i] = score
        return f

    # ------------------------------------------------------------------ public queries

    def query(self, text: str) -> Match:
        """Exact max score, top-k and (if enabled) mean of `text` against everything added so far."""
        n_total = len(self._texts)
        if n_total == 0:
            return Match(0.0, [], 0.0 if self.compute_mean else None)
        tokens = tokenize(text)
        if tokens:
            f = self._all_scores(tokens)
        else:
            f = self._f[:n_total]
            f.fill(0.0)  # rouge_score scores an empty token list 0 against anything
        k = self.top_k
        max_score = float(f.max())
        sel = None
        if k:
            for cut in _TOPK_CUTS:
                if cut <= max_score:
                    sel = np.flatnonzero(f >= cut)
                    if len(sel) >= k:
                        break
            else:
                sel = np.arange(n_total)
            if len(sel) > k:
                fs = f[sel]
                kth = np.partition(fs, len(sel) - k)[len(sel) - k]
                sel = sel[fs >= kth]
            # sel is ascending, so the stable sort breaks ties by insertion order
            sel = sel[np.argsort(-f[sel], kind="stable")[:k]]
            texts = self._texts
            top = [(texts[i], s) for i, s in zip(sel.tolist(), f[sel].tolist())]
        else:
            top = []
        # np.mean over the insertion-ordered float64 scores, exactly what np.mean(list_of_scores) computes
        mean = float(f.mean()) if self.compute_mean else None
        return Match(max_score, top, mean)

    def is_duplicate(self, text: str) -> bool:
        """query(text).max_score > threshold, decided with length, prefix and overlap filters (module docstring)."""
        n_total = len(self._texts)
        thr = self.threshold
        tokens = tokenize(text)
        m = len(tokens)
        if n_total == 0 or m == 0 or thr >= 1.0:
            return False  # every score is 0.0, or no score can exceed 1.0
        if tuple(tokens) in self._seen:
            return True   # an exact token-sequence repeat scores 1.0 > thr
        if m > _WORD or thr < _MIN_PREFIX_THRESHOLD:
            return self.query(text).max_score > thr
        tl = thr - _SLACK
        x = tl * m / (2.0 - tl)      # any duplicate has lcs > x and x < n
        n_hi = m * (2.0 - tl) / tl   # and n < n_hi
        need = math.floor(x) + 1     # matched query positions a duplicate needs
        vocab, df = self._vocab, self._df
        tids = [vocab.get(tok) for tok in tokens]
        counts = Counter(tid for tid in tids if tid is not None)
        m_known = sum(counts.values())
        if m_known < need:
            return False  # too few query tokens occur in the index at all
        # whole tokens, rarest first, until at least m_known - need + 1 positions are covered
        covered, prefix = 0, []
        for tid in sorted(counts, key=df.__getitem__):
            prefix.append(tid)
            covered += counts[tid]
            if covered >= m_known - need + 1:
                break
        rest = m_known - covered     # known positions not probed: bound their matches by their count
        acc = self._acc[:n_total]    # all zero at rest
        for tid in prefix:
            idx, masks = self._postings[tid].view()
            q = counts[tid]
            if q == 1:
                acc[idx] += 1        # ids are unique within a posting list, so fancy += is exact
            else:
                acc[idx] += np.minimum(np.bitwise_count(masks), q)
        cand = np.flatnonzero(acc != 0)   # (much faster than on the integers)
        po = acc[cand]
        acc[cand] = 0
        lens = self._lens[cand]
        keep = (lens > x) & (lens < n_hi) & (2.0 * (po + rest) > tl * (m + lens))
        cand, lens = cand[keep], lens[keep]
        if self._long and any(score > thr for _, score in self._long_scores(tids, x, n_hi)):
            return True
        if not len(cand):
            return False
        return bool((self._verify(tids, cand, lens) > thr).any())

    def _verify(self, tids: list[int | None], cand: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Exact scores of the query (<= 64 tokens) against `cand` (<= 64 tokens each); bits = query positions."""
        m = len(tids)
        lut = self._lut
        used = [tid for tid in tids if tid is not None]
        for j, tid in enumerate(tids):
            if tid is not None:
                lut[tid] |= np.uint64(1 << j)
        try:
            cols = self._tokmat[cand, : int(lens.max())]   # padding -1 reads a spare, always-zero LUT entry
            masks = lut[cols.T]                           # (columns, candidates), rows contiguous
        finally:
            lut[used] = 0
        v = np.full(len(cand), _ONES, dtype=np.uint64)
        u = np.empty_like(v)
        s = np.empty_like(v)
        for row in masks:            # M = 0 past a candidate's end: the identity update
            np.bitwise_and(v, row, out=u)
            np.add(v, u, out=s)
            np.bitwise_xor(v, u, out=v)
            np.bitwise_or(v, s, out=v)
        np.invert(v, out=v)
        np.bitwise_and(v, np.uint64((1 << m) - 1), out=v)
        lcs = np.bitwise_count(v)
        return self._table(m).take(_ROW * lens + lcs)
