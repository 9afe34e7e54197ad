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

What "exact" means (tests/unit/generate/test_rouge.py checks each point against rouge_score itself):
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
  higher bits, so bits at and above n never disturb the low n bits; and they stay ones, since M has none of
  them, so V ^ U keeps them and the OR restores whatever a carry cleared. So LCS = the zero bits of all of V.
  If M == 0 the update is the identity (U = 0), so a step only touches the instructions that contain token a:
  an inverted index maps each token to the (ids, masks) of the instructions containing it, and one step is
  four integer ops on each entry of that posting list. The work per query is the sum of the posting-list
  lengths of its tokens (~1.3 N for Alpaca's instructions, mostly "the", "a", "of"), and it yields the exact
  LCS of *every* pair (LCS 0 for pairs sharing no token).
  Scores then come from a table: F depends only on (lcs, n) for a fixed query length m, so the 65 x 65 table
  of rouge_score's floats is built once per m (same float operations, so same bits) and each of the N scores
  is one lookup `table[65*n + lcs]`; the same pass keeps the running top-k (its first is the max) and sums
  the scores in numpy's pairwise order, so the mean costs almost nothing and is np.mean's float: it is on by
  default, and `compute_mean=False` only leaves `Match.mean` as None. The scan goes block by block so that
  each block's words stay in the core's cache (rouge_scan.py), and with `workers=2` the two halves of the
  instructions are scanned on both cores. Instructions longer than 64 tokens (7 of Alpaca's 52,002) do not
  fit a word; they are kept aside and scored with the roles swapped (the query's positions are the bits), or
  by the textbook dynamic programme when the query is longer than 64 tokens too.
  The loops are compiled with numba (alpaca_ds/generate/rouge_kernels.py, which also describes the storage
  and the dense columns of the most frequent tokens, and rouge_scan.py): written as numpy calls per posting
  list they cost 3.5-4x more (benchmarks/bench_rouge.py times both), in per-call overhead, fancy indexing and
  extra passes.
  numba compiles them on the first use after an install (~10 s) and caches the machine code for every later
  process (~1 s for the first use, mostly importing numba).

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
  * the same bound, sharper: of the unprobed tokens, those with a dense column (the most frequent ones, which
    the prefix leaves unprobed) count min(count in query, count in B) exactly, read from the column; this
    leaves about 1 in 8 of the candidates that pass the bound above (13 of 110 per query over Alpaca's 52K);
  * the survivors get the exact LCS with the roles swapped (the query's positions are the bits, the
    survivor's tokens are fed one by one), and the exact rouge_score float is compared.
  A query longer than 64 tokens or a threshold below 0.01 (where the prefix is the whole query anyway) goes
  through `query`.

Tokenization: rouge_score's tokenizer lower-cases, replaces every run of characters outside [a-z0-9] with a
space, splits on whitespace and keeps the tokens matching ^[a-z0-9]+$. After that substitution only [a-z0-9]
runs and spaces remain, so the tokens are the [a-z0-9] runs of text.lower(). `tokenize` finds them without
importing rouge_score or nltk at run time, and without a regular expression (2x faster): every character of
the lower-cased text outside ASCII becomes "?" (encode's "replace"), every byte outside [a-z0-9] a space
(bytes.translate), and the result is split on spaces. Non-ASCII letters are dropped ("café" -> ["caf"]) except
where str.lower() itself yields ASCII (the Kelvin sign lowers to "k"), exactly as in rouge_score.

This module imports numpy and numba only (no torch, no rouge_score).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from alpaca_ds.generate import rouge_kernels as K
from alpaca_ds.generate import rouge_scan

__all__ = ["Match", "RougeIndex", "tokenize", "rouge_l_f"]

_SEPARATE = bytes(c if c in b"abcdefghijklmnopqrstuvwxyz0123456789" else 32 for c in range(256))  # translate table
_WORD = K.WORD  # instructions of <= 64 tokens live in one machine word per bit-parallel step
_ROW = K.ROW  # score table row length: lcs in 0..64
_DENSE_COLUMNS = 16  # the most frequent tokens scanned densely (rouge_kernels.py) ...
_DENSE_MIN = 256  # ... once in this many instructions (and in > 1/5 of them)
_INITIAL = {"texts": 1024, "tokens": 1024, "arena": 1 << 16}  # capacities, doubled as needed
_PARALLEL_MIN = 8192  # with workers=2, queries against at least this many instructions use both threads
_MIN_PREFIX_THRESHOLD = 0.01  # below this the prefix filter would probe (almost) everything: use query()


def tokenize(text: str) -> list[str]:
    """rouge_score's DefaultTokenizer(use_stemmer=False).tokenize(text), re-expressed (see module docstring)."""
    return text.lower().encode("ascii", "replace").translate(_SEPARATE).decode("ascii").split()


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
    table[0, :] = 0.0  # empty existing text
    table[:, 0] = 0.0  # lcs 0 (p + r == 0)
    table[np.isnan(table)] = 0.0
    return np.ascontiguousarray(table.ravel())


@dataclass(frozen=True)
class Match:
    max_score: float  # exact max rougeL F over all added texts (0.0 if none)
    top: list[tuple[str, float]]  # exact top-k (text, score), score descending, ties broken by insertion order
    mean: float | None  # mean score over all added texts, or None when not computed


# Arrays grown by doubling, per group: name -> (dtype, fill of new entries, trailing shape).
_PER_TEXT = {
    "_lens": (np.int32, 0, ()),
    "_short": (np.uint8, 0, ()),
    "_tokmat": (np.int32, -1, (_WORD,)),
    "_acc": (np.uint8, 0, ()),
    "_touched": (np.int64, 0, ()),
}
_PER_TOKEN = {
    "_slot": (np.int64, -1, ()),
    "_start": (np.int64, 0, ()),
    "_cap": (np.int64, 0, ()),
    "_plen": (np.int64, 0, ()),
    "_df": (np.int64, 0, ()),
    "_lut": (np.uint64, 0, ()),
}
_ARENA = {"_p_ids": (np.uint32, 0, ()), "_p_masks": (np.uint64, 0, ())}


class RougeIndex:
    """Exact rougeL F (rouge_score, no stemmer) of a query against every added instruction.

    threshold: a query is a duplicate when its max score is strictly greater (Alpaca: 0.7); in [0, 1].
    top_k: how many most-similar instructions `query` returns (Alpaca: 10).
    compute_mean: whether `query` fills `Match.mean` (Alpaca's avg_similarity_score). The mean is exact and
        almost free — the scan sums the scores as it makes them (see the module docstring) — so it is on by
        default; False leaves `mean` as None.
    workers: 1, or 2 to scan the two halves of the instructions on two threads for every query against at
        least 8,192 of them (1.3-1.5x faster over Alpaca's 52K on a 2-core machine). The constructor runs the
        two-thread scan once, so numba compiles it (~10 s, once after an install) or loads it before any query,
        and keeps 2 only where numba's thread pool is OpenMP or TBB: on its own 'workqueue' pool (neither
        library found) two threads scanned slower than one, so `workers` reads 1 there. Worth it where the other
        core is free, as in a batch run; with an online run on the same 2 cores, the request loop needs that core.
    An empty index answers max_score 0.0, top [] and mean 0.0 (or None). Adding the same text twice indexes it
    twice, as Alpaca's lists would. Not thread-safe (queries share work buffers); use one index per thread.
    """

    def __init__(self, threshold: float = 0.7, top_k: int = 10, compute_mean: bool = True, workers: int = 1):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        self.threshold = float(threshold)
        self.top_k = int(top_k)
        self.compute_mean = bool(compute_mean)
        if workers not in (1, 2):
            raise ValueError(f"workers must be 1 or 2, got {workers}")
        self.workers = workers
        self._texts: list[str] = []
        self._vocab: dict[str, int] = {}  # token -> token id
        # the last text encoded, and its (tokens, token ids, whether a token has no id yet); see _encode
        self._last_text: str | None = None
        self._last: tuple = ([], np.empty(0, dtype=np.int32), False)
        self._tables: dict[int, np.ndarray] = {}  # query length -> score table
        self._top = np.empty(max(1, self.top_k), dtype=np.int64)  # the top-k's ids; the top-1 gives the max
        self._top_f = np.empty(len(self._top))  # ... and their scores
        self._arena_top = 0
        # instructions of > 64 tokens (rouge_kernels.py), appended rarely
        self._long_ids = np.empty(0, dtype=np.int64)
        self._long_start = np.zeros(1, dtype=np.int64)
        self._long_tok = np.empty(0, dtype=np.int32)
        for group, key in ((_PER_TEXT, "texts"), (_PER_TOKEN, "tokens"), (_ARENA, "arena")):
            self._resize(group, _INITIAL[key])
        self._n_dense = np.zeros(1, dtype=np.int64)  # dense columns in use (an array: the kernel updates it)
        self._dense = np.zeros((_DENSE_COLUMNS, len(self._lens)), dtype=np.uint64)
        if workers == 2:  # the scan on nothing: compiled or loaded now, and numba's thread pool chosen
            rouge_scan.all_scores_two_threads(
                np.empty(0, dtype=np.int32), 0, self._arrays(), self._table(0), self._lut, self._top, self._top_f
            )
            if numba.threading_layer() not in ("omp", "tbb"):
                self.workers = 1

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def texts(self) -> list[str]:
        """The added texts in insertion order (do not modify)."""
        return self._texts

    def _resize(self, group: dict, cap: int) -> None:
        for name, (dtype, fill, shape) in group.items():
            new = np.full((cap, *shape), fill, dtype=dtype)
            old = getattr(self, name, None)
            if old is not None:
                new[: len(old)] = old
            setattr(self, name, new)

    # ------------------------------------------------------------------ adding

    def add(self, text: str) -> None:
        """Index an accepted (or seed) instruction."""
        tokens, q, unknown = self._encode(text)
        i = len(self._texts)
        if i + 1 == len(self._lens):  # one entry to spare: any_above writes one past the ids it touches
            self._resize(_PER_TEXT, 2 * len(self._lens))
            dense = np.zeros((len(self._dense), len(self._lens)), dtype=np.uint64)
            dense[:, : i + 1] = self._dense
            self._dense = dense
        if unknown:
            vocab = self._vocab
            q = np.array([vocab.setdefault(tok, len(vocab)) for tok in tokens], dtype=np.int32)  # new: next id
            self._last = (tokens, q, False)
            if len(vocab) > len(self._df):
                self._resize(_PER_TOKEN, 2 * len(vocab))
        if len(q) <= _WORD:
            while (
                top := K.add_postings(
                    i,
                    q,
                    self._lens,
                    self._short,
                    self._tokmat,
                    self._p_ids,
                    self._p_masks,
                    self._arena_top,
                    self._start,
                    self._cap,
                    self._plen,
                    self._df,
                    self._lut,
                    self._slot,
                    self._dense,
                    self._n_dense,
                    _DENSE_MIN,
                )
            ) < 0:
                self._resize(_ARENA, 2 * len(self._p_ids))
            self._arena_top = top
        else:
            self._lens[i] = len(q)
            self._df[np.unique(q)] += 1
            self._long_ids = np.append(self._long_ids, i)
            self._long_tok = np.concatenate([self._long_tok, q])
            self._long_start = np.append(self._long_start, len(self._long_tok))
        self._texts.append(text)

    # ------------------------------------------------------------------ queries

    def _encode(self, text: str) -> tuple[list[str], np.ndarray, bool]:
        """tokenize(text), the token ids (-1 for a token never added) and whether there is a -1, remembered for
        one text: the generator adds the text it has just queried. Only `add` gives tokens ids, and it leaves
        its own text here with all of them, so the ids remembered are never stale."""
        if text != self._last_text:
            tokens = tokenize(text)
            vocab = self._vocab
            ids = [vocab.get(tok, -1) for tok in tokens]
            self._last_text, self._last = text, (tokens, np.array(ids, dtype=np.int32), -1 in ids)
        return self._last

    def _arrays(self) -> tuple:
        """The index's arrays as the scan takes them (rouge_scan._prepare)."""
        return (
            self._p_ids,
            self._p_masks,
            self._start,
            self._plen,
            self._slot,
            self._dense,
            self._lens,
            self._short,
            self._long_ids,
            self._long_start,
            self._long_tok,
        )

    def _table(self, m: int) -> np.ndarray:
        table = self._tables.get(m)
        if table is None:
            table = _score_table(m)
            if m <= 256:  # 34 KB each; a freak query length is not worth keeping
                self._tables[m] = table
        return table

    def query(self, text: str) -> Match:
        """Exact max score, top-k and (if enabled) mean of `text` against everything added so far."""
        n_total = len(self._texts)
        if n_total == 0:
            return Match(0.0, [], 0.0 if self.compute_mean else None)
        q = self._encode(text)[1]
        two = self.workers == 2 and n_total >= _PARALLEL_MIN
        kernel = rouge_scan.all_scores_two_threads if two else rouge_scan.all_scores
        filled, total = kernel(q, n_total, self._arrays(), self._table(len(q)), self._lut, self._top, self._top_f)
        texts = self._texts
        k = min(filled, self.top_k)
        top = list(zip([texts[i] for i in self._top[:k].tolist()], self._top_f[:k].tolist()))
        # np.mean over the insertion-ordered float64 scores is np.add.reduce's pairwise sum over the count, which
        # the kernel computes in the same order
        mean = total / n_total if self.compute_mean else None
        best = self._top_f[0] if filled else 0.0
        return Match(float(best), top, mean)

    def is_duplicate(self, text: str) -> bool:
        """query(text).max_score > threshold, decided with length, prefix and overlap filters (module docstring)."""
        thr = self.threshold
        q = self._encode(text)[1]
        m = len(q)
        if not self._texts or m == 0 or thr >= 1.0:
            return False  # every score is 0.0, or no score can exceed 1.0
        if m > _WORD or thr < _MIN_PREFIX_THRESHOLD:
            return self.query(text).max_score > thr
        return K.any_above(
            q,
            thr,
            len(self._texts),
            self._p_ids,
            self._p_masks,
            self._start,
            self._plen,
            self._df,
            self._lens,
            self._tokmat,
            self._table(m),
            self._long_ids,
            self._long_start,
            self._long_tok,
            self._acc,
            self._touched,
            self._lut,
            self._dense,
            self._slot,
            self._short,
        )
