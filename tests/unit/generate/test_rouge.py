"""RougeIndex against brute-force rouge_score, the way Alpaca's generate_instruction.py scores a new instruction:
`[rouge_scorer._score_lcs(new_tokens, t).fmeasure for t in all_instruction_tokens]`, reject if max > threshold,
keep the 10 best and np.mean. Decisions, max and top-k scores must be identical (floats compared with ==), the
mean within 1e-12 (it is in fact bit-identical, also asserted)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

from alpaca_ds.generate import rouge  # noqa: E402
from alpaca_ds.generate.rouge import Match, RougeIndex, rouge_l_f, tokenize  # noqa: E402
from helpers.paths import ALPACA_DATA, ROOT, SHARED  # noqa: E402

SEEDS = SHARED / "self-instruct" / "seed_tasks.jsonl"

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
ROUGE_TOKENIZE = SCORER._tokenizer.tokenize


class Brute:
    """Alpaca's loop, verbatim in what it computes (single process)."""

    def __init__(self):
        self.texts: list[str] = []
        self.tokens: list[list[str]] = []

    def add(self, text: str) -> None:
        self.texts.append(text)
        self.tokens.append(ROUGE_TOKENIZE(text))

    def scores(self, text: str) -> list[float]:
        new = ROUGE_TOKENIZE(text)
        return [rouge_scorer._score_lcs(new, t).fmeasure for t in self.tokens]


def check(index: RougeIndex, brute: Brute, text: str, *, check_dup: bool = True) -> bool:
    """Compare everything for one query; returns the (agreed) duplicate decision."""
    scores = brute.scores(text)
    match = index.query(text)
    expected_max = max(scores) if scores else 0.0
    assert match.max_score == expected_max, text
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: index.top_k]
    assert match.top == [(brute.texts[i], scores[i]) for i in order], text
    if index.compute_mean:
        expected_mean = float(np.mean(scores)) if scores else 0.0
        assert abs(match.mean - expected_mean) <= 1e-12, text
        assert match.mean == expected_mean, text  # stronger than required: same bits as np.mean
    else:
        assert match.mean is None
    duplicate = expected_max > index.threshold
    if check_dup:
        assert index.is_duplicate(text) == duplicate, text
    return duplicate


def run_stream(texts, threshold=0.7, top_k=10, compute_mean=True, add_rejected_every=0):
    """The generator's loop on both implementations; returns (accepted, rejected)."""
    index, brute = RougeIndex(threshold, top_k, compute_mean), Brute()
    accepted = rejected = 0
    for n, text in enumerate(texts):
        if check(index, brute, text):
            rejected += 1
            if not (add_rejected_every and n % add_rejected_every == 0):
                continue  # sometimes index a duplicate anyway, to get repeated texts in the index
        accepted += 1
        index.add(text)
        brute.add(text)
        assert len(index) == len(brute.texts)
    return accepted, rejected


# ---------------------------------------------------------------- tokenizer and score formula

TRICKY = [
    "",
    " ",
    "...",
    "?!",
    "—",
    "\n\t",
    "a",
    "A",
    "Hello, World!",
    "hello world",
    "HELLO   WORLD!!!",
    "don't stop",
    "dont stop",
    "e-mail e_mail email",
    "café naïve résumé",
    "Straße STRASSE",
    "İstanbul",
    "\u212a\u212b kelvin",
    "ﬁne ﬂow",
    "１２３ 123",
    "x² + y²",
    "日本語のテキスト",
    "Ünïcödé ÀÉÎ",
    "tab\tsep\nnew",
    "a1b2 c3",
    "3.14159 is pi",
    "C++ and C#",
    "emoji 🙂 test",
    "a" * 300,
    "the the the the the",
]


def random_text(rng: random.Random, words: list[str], max_len: int = 20) -> str:
    seps = [" ", "  ", ", ", "-", "_", "\n", "! ", "'", "/", "…", " — "]
    n = rng.randint(0, max_len)
    out = []
    for _ in range(n):
        w = rng.choice(words)
        r = rng.random()
        if r < 0.1:
            w = w.upper()
        elif r < 0.2:
            w = w.capitalize()
        out.append(w)
        out.append(rng.choice(seps))
    return "".join(out)


def test_tokenize_is_rouge_score_tokenizer():
    rng = random.Random(0)
    alphabet = (
        "abcXYZ019 \t\n.,;:!?'\"-_/\\()[]{}@#$%^&*+=<>|~`éÉßİıΣσςЖж日本\u212a\u212b\u0130\u2160ﬁ１٣🙂\u00a0\u2028\ud83d"
    )
    samples = TRICKY + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    for text in samples:
        assert tokenize(text) == ROUGE_TOKENIZE(text), repr(text)


def test_rouge_l_f_is_rouge_scores_float():
    rng = random.Random(1)
    for _ in range(1500):
        m, n = rng.randint(0, 70), rng.randint(0, 70)
        a = [rng.choice("abcd") for _ in range(m)]
        b = [rng.choice("abcd") for _ in range(n)]
        lcs = rouge_scorer._lcs_table(a, b)[-1][-1]
        assert rouge_l_f(lcs, m, n) == rouge_scorer._score_lcs(a, b).fmeasure
        assert rouge_l_f(lcs, n, m) == rouge_scorer._score_lcs(b, a).fmeasure


# ---------------------------------------------------------------- adversarial and random streams


def test_tricky_texts_stream():
    texts = TRICKY + [t.upper() for t in TRICKY] + [t + "!" for t in TRICKY] + TRICKY
    for threshold in (0.0, 0.5, 0.7, 1.0):
        run_stream(texts, threshold=threshold, add_rejected_every=3)


def test_empty_index_and_empty_queries():
    for compute_mean in (True, False):
        index = RougeIndex(compute_mean=compute_mean)
        assert len(index) == 0
        assert index.query("anything") == Match(0.0, [], 0.0 if compute_mean else None)
        assert not index.is_duplicate("anything")
        index.add("...")  # no tokens at all
        index.add("Write a poem.")
        brute = Brute()
        brute.add("...")
        brute.add("Write a poem.")
        for q in ("", "!!!", "write a poem", "poem"):
            check(index, brute, q)
        assert index.query("").top == [("...", 0.0), ("Write a poem.", 0.0)]


def test_identical_and_case_punctuation_variants_are_duplicates():
    index, brute = RougeIndex(), Brute()
    for t in ("Give three tips for staying healthy.", "Name three colors."):
        index.add(t)
        brute.add(t)
    for q in (
        "Give three tips for staying healthy.",
        "give three tips for staying healthy",
        "GIVE three tips, for staying HEALTHY!!!",
        "Give three tips for staying healthy?",
        "Give 3 tips for staying healthy.",
        "Give-three-tips-for-staying-healthy",
    ):
        assert check(index, brute, q)
        assert index.query(q).top[0] == (
            "Give three tips for staying healthy.",
            1.0 if "3" not in q else index.query(q).max_score,
        )
    assert not check(index, brute, "Name three tips.")


def test_threshold_is_strict_at_an_exactly_representable_score():
    base = "a b c d e f g h i j"
    other = "a b c d e f g x y z"  # lcs 7 of 10 and 10
    exact = rouge_scorer._score_lcs(ROUGE_TOKENIZE(base), ROUGE_TOKENIZE(other)).fmeasure
    for threshold, dup in ((exact, False), (float(np.nextafter(exact, 0.0)), True)):
        index = RougeIndex(threshold=threshold)
        index.add(base)
        assert index.query(other).max_score == exact
        assert index.is_duplicate(other) is dup
        assert (index.query(other).max_score > threshold) is dup


def test_repeated_tokens_and_long_texts():
    rng = random.Random(2)
    words = ["a", "b", "c", "the", "x"]
    texts = []
    for _ in range(60):
        n = rng.choice([0, 1, 2, 5, 20, 63, 64, 65, 66, 90])
        texts.append(" ".join(rng.choice(words) for _ in range(n)))
    texts += [" ".join(["a"] * n) for n in (1, 2, 3, 64, 65, 100)]
    texts += [" ".join(["a", "b"] * 40), " ".join(["b", "a"] * 40) + " c"]
    for threshold in (0.3, 0.8):
        run_stream(texts, threshold=threshold, add_rejected_every=4)


@pytest.mark.parametrize("seed", range(4))
def test_random_streams_with_near_duplicates(seed):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)] + ["the", "a", "of", "Café", "naïve", "don't", "x²", "３"]
    texts = []
    for _ in range(260):
        if texts and rng.random() < 0.45:
            # mutate an earlier text: near-duplicates straddle the threshold
            toks = tokenize(rng.choice(texts))
            for _ in range(rng.randint(0, 3)):
                op = rng.random()
                if op < 0.4 and toks:
                    del toks[rng.randrange(len(toks))]
                elif op < 0.8:
                    toks.insert(rng.randint(0, len(toks)), rng.choice(words))
                elif toks:
                    toks[rng.randrange(len(toks))] = rng.choice(words)
            texts.append(" ".join(t.upper() if rng.random() < 0.2 else t for t in toks) + rng.choice(["?", "", " !"]))
        else:
            texts.append(random_text(rng, words, max_len=rng.choice([6, 14, 30, 70])))
    threshold = [0.7, 0.5, 0.85, 0.7][seed]
    accepted, rejected = run_stream(
        texts, threshold=threshold, top_k=[10, 3, 10, 0][seed], compute_mean=seed != 1, add_rejected_every=5
    )
    assert rejected > 10 and accepted > 50  # the stream really exercises both decisions


def test_growth_and_dense_columns(monkeypatch):
    """Every storage path at small scale: arrays that start tiny and grow many times (posting lists moved in
    the arena), and frequent tokens promoted to dense columns mid-stream, until the columns run out. 200 texts
    (131 indexed) take the arrays through 7 doublings of the texts' and 9 of the arena's, and fill the dense
    columns by the 20th: the brute-force reference is quadratic, so a longer stream buys no other path."""
    monkeypatch.setattr(rouge, "_INITIAL", {"texts": 2, "tokens": 2, "arena": 8})
    monkeypatch.setattr(rouge, "_DENSE_MIN", 6)
    monkeypatch.setattr(rouge, "_DENSE_COLUMNS", 3)
    rng = random.Random(7)
    common = ["the", "a", "of", "to", "and"]  # each in well over 1/5 of the texts
    words = common + [f"w{i}" for i in range(60)]
    texts = []
    for _ in range(200):
        if texts and rng.random() < 0.3:
            toks = tokenize(rng.choice(texts))
            toks.insert(rng.randint(0, len(toks)), rng.choice(words))
            texts.append(" ".join(toks))
        else:
            n = rng.choice([3, 8, 15, 40, 70])
            texts.append(" ".join(rng.choice(common) if rng.random() < 0.4 else rng.choice(words) for _ in range(n)))
    index, brute = RougeIndex(), Brute()
    for text in texts:
        if not check(index, brute, text):
            index.add(text)
            brute.add(text)
    assert index._n_dense[0] == 3 and sum(index._slot >= 0) == 3  # the dense path really ran, and is capped
    assert len(index) > 120 and len(index._lens) >= 128 and len(index._p_ids) >= 8 << 8  # grown many times


def test_mean_is_numpys_pairwise_sum():
    """The kernel sums the scores in numpy's pairwise order (8 lanes in a leaf of <= 128, halves split at a
    multiple of 8) so that the mean is np.mean's bits: every length through a few levels of the tree."""
    from numba import njit

    from alpaca_ds.generate import rouge_scan as K

    @njit
    def pairwise_sum(f):
        leaf_lo, leaf_n, program = K._pairwise_plan(len(f))
        sums, hits = np.empty(len(leaf_lo)), 0
        for c in range(len(leaf_lo)):
            sums[c], hit = K._leaf_sum_and_hits(f[leaf_lo[c] : leaf_lo[c] + leaf_n[c]], 2.0)
            hits += hit
        return K._pairwise_combine(program, sums), hits

    rng = np.random.default_rng(0)
    for n in [*range(1, 1100), 2047, 2048, 2049, 8191, 8192, 8193, 52_002, 100_003]:
        f = rng.random(n) * rng.choice([1e-3, 1.0, 1e3], n)
        f[rng.random(n) < 0.5] = 0.0
        total, hits = pairwise_sum(f)
        assert total == np.add.reduce(f) and total / n == np.mean(f.tolist()), n
        assert hits == np.count_nonzero(f > 2.0), n  # the leaves' counts of scores above the k-th best


def test_gather8_reads_what_indexing_reads():
    """The scan's 8-wide gather (an LLVM intrinsic of our own) at every offset, aligned or not, with the scan's
    uint64 places and with int64 ones, against numpy's indexing."""
    from numba import njit

    from alpaca_ds.generate.rouge_kernels import _gather8

    @njit
    def gather_at(out, table, at, i):
        _gather8(out, table, at, i)

    rng = np.random.default_rng(3)
    table = rng.random(65 * 65)
    for dtype in (np.uint64, np.int64):
        at = rng.integers(0, len(table), 29).astype(dtype)
        for i in range(len(at) - 7):
            out = np.full(len(at), -1.0)
            gather_at(out, table, at, i)
            expected = np.full(len(at), -1.0)
            expected[i : i + 8] = table[at[i : i + 8]]
            assert (out == expected).all(), (dtype, i)


@pytest.mark.parametrize("workers", [1, 2])
def test_thousands_of_instructions_in_blocks_and_halves(monkeypatch, workers):
    """A query against 5,000 instructions crosses the kernel's blocks (whole leaves of the pairwise sum, each
    scored while in cache); with workers=2 (made to apply from 2 instructions up) it is split into the root's
    two halves on two threads and the top-k lists merged, equal scores earlier first. Repeated texts make ties
    across the halves; every query is checked against brute-force rouge_score."""
    monkeypatch.setattr(rouge, "_PARALLEL_MIN", 2)
    rng = random.Random(11)
    words = ["the", "a", "of", "to", "and"] * 6 + [f"w{i}" for i in range(300)]
    texts = [random_text(rng, words, max_len=30) for _ in range(2_500)]
    texts += [" ".join(["w1"] * 70), *rng.sample(texts, 1_000), *texts[:1_500]]  # a long one, repeats
    index, brute = RougeIndex(workers=workers), Brute()
    for n, text in enumerate(texts):
        index.add(text)
        brute.add(text)
        if n in (0, 1, 2, 9, 200, 2_049):
            check(index, brute, rng.choice(texts))
    for query in [texts[0], texts[2_400], texts[-1], random_text(rng, words, 30), "the a of"]:
        check(index, brute, query)


def test_constructor_validation():
    with pytest.raises(ValueError):
        RougeIndex(threshold=1.5)
    with pytest.raises(ValueError):
        RougeIndex(top_k=-1)
    with pytest.raises(ValueError, match="workers"):
        RougeIndex(workers=3)


@pytest.mark.parametrize("layer, workers", [("omp", 2), ("workqueue", 1)])
def test_two_threads_only_on_a_thread_pool_that_pays(layer, workers):
    """numba picks its thread pool at the first parallel run, which the constructor makes; two threads stay only
    on OpenMP (or TBB): on numba's own workqueue pool they scanned slower than one (benchmarks/RESULTS.md)."""
    code = (
        "import numba; from alpaca_ds.generate.rouge import RougeIndex; index = RougeIndex(workers=2); "
        "print(numba.threading_layer(), index.workers)"
    )
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode and "threading layer" in out.stderr.lower():
        pytest.skip(f"numba cannot load its {layer} thread pool on this machine")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [layer, str(workers)]


def test_generate_rouge_imports_no_torch_and_no_rouge_score():
    code = "import sys, alpaca_ds.generate.rouge; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded = {m.split(".")[0] for m in out.stdout.split()}
    assert not loaded & {"torch", "rouge_score", "nltk"}


# ---------------------------------------------------------------- the real data

needs_real = pytest.mark.skipif(
    not SEEDS.is_file() or not ALPACA_DATA.is_file(),
    reason="the 175 self-instruct seeds and alpaca_data.json are not at ../shared/data (they are never committed)",
)


@needs_real
def test_real_seeds_and_alpaca_instructions():
    seeds = [json.loads(line)["instruction"] for line in SEEDS.read_text().splitlines() if line.strip()]
    assert len(seeds) == 175
    alpaca = [r["instruction"] for r in json.loads(ALPACA_DATA.read_text())[:1500]]
    rng = random.Random(3)
    # the released instructions are already de-duplicated, so also feed mutated copies that straddle 0.7
    stream, mutated = [], set()
    for n, text in enumerate(alpaca):
        stream.append(text)
        if n % 6 == 5:
            toks = tokenize(rng.choice(alpaca[: n + 1] + seeds))
            for _ in range(rng.randint(1, 3)):
                if toks and rng.random() < 0.5:
                    del toks[rng.randrange(len(toks))]
                else:
                    toks.insert(rng.randint(0, len(toks)), rng.choice(["please", "the", "new", "short"]))
            mutated.add(len(stream))
            stream.append(" ".join(toks).capitalize() + ".")
    index, brute = RougeIndex(), Brute()
    for s in seeds:
        index.add(s)
        brute.add(s)
    new_tokens = [ROUGE_TOKENIZE(t) for t in stream]
    counts = [Counter(t) for t in brute.tokens]
    accepted = rejected = 0
    for n, text in enumerate(stream):
        if (n in mutated and n % 3 == 0) or n % 25 == 0:
            duplicate = check(index, brute, text)  # full comparison: max, top-10, mean, decision
        else:
            # decision only, against a brute force cut by independent, obviously valid bounds: F is
            # 2*lcs/(m+n) up to rounding, lcs <= min(m, n) and lcs <= the multiset overlap of the tokens
            duplicate = False
            a = new_tokens[n]
            ca = Counter(a)
            sa = ca.keys()
            for t, ct in zip(brute.tokens, counts):
                if 2 * min(len(a), len(t)) > (0.7 - 1e-9) * (len(a) + len(t)) and 2 * sum(
                    min(ca[w], ct[w]) for w in sa & ct.keys()
                ) > (0.7 - 1e-9) * (len(a) + len(t)):
                    if rouge_scorer._score_lcs(a, t).fmeasure > 0.7:
                        duplicate = True
                        break
            assert index.is_duplicate(text) == duplicate, text
            assert (index.query(text).max_score > 0.7) == duplicate, text
        if duplicate:
            rejected += 1
        else:
            accepted += 1
            index.add(text)
            brute.add(text)
            counts.append(Counter(new_tokens[n]))
    assert rejected > 50, rejected  # the mutated copies really exercise rejection
