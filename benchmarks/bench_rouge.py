"""ROUGE-L de-duplication speed and exactness: `RougeIndex` against brute-force rouge_score, on the real data.

    /work/venv/bin/python benchmarks/bench_rouge.py                  # full: ~6 min, most of it brute force
    /work/venv/bin/python benchmarks/bench_rouge.py --brute 1000     # time brute force on 1,000, extrapolate

The generator's loop, as Alpaca's generate_instruction.py runs it: the 175 self-instruct seed instructions are
indexed, then the 52,002 instructions of alpaca_data.json are fed in file order as candidates; a candidate whose
max rougeL F (rouge_score tokenizer, no stemmer) against the seeds and every accepted candidate exceeds 0.7 is
rejected, otherwise it gets its 10 most similar instructions and the mean score as metadata and is accepted.

  (a) first 5,000 candidates. Brute force = Alpaca's computation in one process: for each candidate
      [rouge_scorer._score_lcs(new_tokens, t).fmeasure for t in all accepted tokens], np.argsort top-10,
      np.mean, max > 0.7. Its decisions are compared with RougeIndex's on all 5,000 candidates, and on every
      accepted one the max, the top-10 scores and the mean are compared too (== on floats). With --brute N < 5000
      only the first N candidates run the full brute force; its time is extrapolated to 5,000 by the measured
      time per pair times the number of pairs of the 5,000 (said so in the table), and the decisions of the
      remaining candidates are checked with a pruned brute force: rouge_score on every pair except those an
      independent bound proves below 0.7 (2*min(m,n) or 2*multiset-overlap <= (0.7 - 1e-9)(m+n)).
  (a') the same 5,000 with every 4th candidate replaced by a mutated copy of an earlier instruction (a word
      dropped, inserted or replaced, case and punctuation changed): the released Alpaca instructions are already
      de-duplicated, so (a) rejects few and this stream exercises rejection. Decisions checked with the pruned
      brute force above.
  (b) all 52,002 candidates through RougeIndex: `query` for every candidate (max, top-10 and mean; the
      generator's loop), the same on two threads (workers=2: every query against >= 8,192 instructions is split
      across both cores; its scores are compared with the one-thread pass's), the same with compute_mean=False,
      and `is_duplicate` alone (decisions only); each one-thread pass also through the RougeIndex of --old (the
      pure-numpy one, loaded from git), for the speed-up measured in the same run and a comparison of every
      candidate's max, top-10 scores and mean. The wall time per candidate is also reported around 5K, 13K,
      26K and 52K kept, where it grows with the index. Last, the first use of the numba-compiled index in a
      fresh process is timed with an empty and with a filled numba cache.

Times are wall clock and process CPU (CPU time is the steadier number on a shared machine for the one-thread
passes; the two-thread pass counts both threads' CPU, waiting included, so its wall time is the one to read);
RougeIndex passes are repeated (--repeats, --repeats-full) and the least time is reported. Needs ../shared/data
(seed_tasks.jsonl and alpaca_data.json); without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter

import numpy as np

from alpaca_ds.generate.rouge import RougeIndex, tokenize

from common import ALPACA, ROOT, SELF_INSTRUCT

SEEDS = SELF_INSTRUCT / "seed_tasks.jsonl"
THRESHOLD = 0.7
OLD_REV = "d6ae504"  # the last commit with the pure-numpy RougeIndex


class Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


GROWTH = (5_000, 13_000, 26_000, 52_000)  # kept instructions at which the cost per candidate is reported
WINDOW = 1_000  # ... measured over the candidates while the last WINDOW were kept


def index_pass(seeds, candidates, mode="query", compute_mean=True, index_cls=RougeIndex, workers=1):
    """The generator's loop through an index; returns (decisions, per-candidate (max, top scores, mean), clock,
    {kept: wall us per candidate over the window ending there})."""
    decisions, details, growth, marks = [], [], {}, {}
    with Clock() as clock:
        index = index_cls(THRESHOLD, top_k=10, compute_mean=compute_mean, **({"workers": 2} if workers == 2 else {}))
        for s in seeds:
            index.add(s)
        for n, text in enumerate(candidates):
            if mode == "query":
                match = index.query(text)
                duplicate = match.max_score > THRESHOLD
                details.append(match)  # (read after the clock stops: the bench's bookkeeping is not timed)
            else:
                duplicate = index.is_duplicate(text)
            decisions.append(duplicate)
            if not duplicate:
                index.add(text)
                kept = len(index)
                if kept + WINDOW in GROWTH or kept in GROWTH:
                    marks[kept] = (n, time.perf_counter())
                    if kept - WINDOW in marks:
                        (n0, t0), (n1, t1) = marks[kept - WINDOW], marks[kept]
                        growth[kept] = 1e6 * (t1 - t0) / (n1 - n0)
    details = [(m.max_score, [s for _, s in m.top], m.mean) for m in details]
    return decisions, details, clock, growth


def best_of(repeats, *args, **kwargs):
    """index_pass `repeats` times; the decisions of the first run, the least wall and CPU time (and growth)."""
    decisions, details, clock, growth = index_pass(*args, **kwargs)
    for _ in range(repeats - 1):
        again, _, other, other_growth = index_pass(*args, **kwargs)
        assert again == decisions
        clock.wall, clock.cpu = min(clock.wall, other.wall), min(clock.cpu, other.cpu)
        growth = {k: min(v, other_growth[k]) for k, v in growth.items()}
    return decisions, details, clock, growth


def old_index(rev: str):
    """RougeIndex as committed in `rev` (the pure-numpy one before numba), loaded from git for comparison."""
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:alpaca_ds/generate/rouge.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("rouge_at_" + rev)
    sys.modules[module.__name__] = module  # dataclasses looks its module up
    exec(compile(src, f"{rev}:alpaca_ds/generate/rouge.py", "exec"), module.__dict__)
    return module.RougeIndex


FIRST_USE = """import time
t = time.perf_counter()
from alpaca_ds.generate.rouge import RougeIndex
index = RougeIndex()
index.add("Give three tips for staying healthy.")
index.add(" ".join(["word"] * 70))
index.query("Give three tips.")
index.is_duplicate("Give three tips for staying fit.")
print(time.perf_counter() - t)
"""


def first_use_seconds(cache_dir: str) -> float:
    """Wall time of importing rouge.py and calling each compiled path once, in a fresh process whose numba cache
    is `cache_dir` (empty: numba compiles; the second time: it loads the cached machine code)."""
    out = subprocess.run(
        [sys.executable, "-c", FIRST_USE],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "NUMBA_CACHE_DIR": cache_dir, "PYTHONPATH": str(ROOT)},
    )
    return float(out.stdout)


def brute_pass(seeds, candidates):
    """Alpaca's computation, one process; returns (decisions, details, clock, pairs scored)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    decisions, details, pairs = [], [], 0
    with Clock() as clock:
        all_tokens = [scorer._tokenizer.tokenize(s) for s in seeds]
        for text in candidates:
            new = scorer._tokenizer.tokenize(text)
            scores = [rouge_scorer._score_lcs(new, t).fmeasure for t in all_tokens]
            pairs += len(scores)
            top = [scores[i] for i in np.argsort(scores)[-10:][::-1]]
            duplicate = max(scores) > THRESHOLD
            decisions.append(duplicate)
            details.append((max(scores), top, float(np.mean(scores))))
            if not duplicate:
                all_tokens.append(new)
    return decisions, details, clock, pairs


def pruned_brute_decisions(seeds, candidates, decisions_to_follow=None):
    """Exact decisions via rouge_score on every pair not provably below the threshold (see module docstring).
    If decisions_to_follow is given, the accepted set follows those decisions (to check a tail of the stream)."""
    from rouge_score import rouge_scorer

    lo = THRESHOLD - 1e-9
    tokens = [tokenize(s) for s in seeds]
    counts = [Counter(t) for t in tokens]
    out = []
    for n, text in enumerate(candidates):
        a = tokenize(text)
        ca = Counter(a)
        keys = ca.keys()
        duplicate = False
        for t, ct in zip(tokens, counts):
            total = len(a) + len(t)
            if (
                2 * min(len(a), len(t)) > lo * total
                and 2 * sum(min(ca[w], ct[w]) for w in keys & ct.keys()) > lo * total
            ):
                if rouge_scorer._score_lcs(a, t).fmeasure > THRESHOLD:
                    duplicate = True
                    break
        out.append(duplicate)
        follow = decisions_to_follow[n] if decisions_to_follow is not None else duplicate
        if not follow:
            tokens.append(a)
            counts.append(ca)
    return out


def mutate(rng: random.Random, text: str, vocabulary: list[str]) -> str:
    toks = tokenize(text)
    for _ in range(rng.randint(1, 2)):
        op = rng.random()
        if op < 0.4 and len(toks) > 1:
            del toks[rng.randrange(len(toks))]
        elif op < 0.7:
            toks.insert(rng.randint(0, len(toks)), rng.choice(vocabulary))
        elif toks:
            toks[rng.randrange(len(toks))] = rng.choice(vocabulary)
    out = " ".join(w.upper() if rng.random() < 0.1 else w for w in toks)
    return out[:1].upper() + out[1:] + rng.choice([".", "?", "!", ""])


def fmt_row(cells):
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", type=int, default=5000, help="candidates in part (a)")
    ap.add_argument("--brute", type=int, default=None, help="run the full brute force on only the first N of them")
    ap.add_argument("--skip-full", action="store_true", help="skip part (b)")
    ap.add_argument("--repeats", type=int, default=3, help="RougeIndex passes in (a) and (a'): best of this many")
    ap.add_argument("--repeats-full", type=int, default=1, help="RougeIndex passes in (b): best of this many")
    ap.add_argument(
        "--old", default=OLD_REV, help="git revision whose RougeIndex (b) also times and compares with ('' to skip)"
    )
    args = ap.parse_args()
    if not SEEDS.is_file() or not ALPACA.is_file():
        print(
            f"skipped: {SEEDS} and {ALPACA} are needed (the public data is never committed; see "
            f"../shared/data/MANIFEST.md)"
        )
        return 0
    seeds = [json.loads(line)["instruction"] for line in SEEDS.read_text().splitlines() if line.strip()]
    alpaca = [r["instruction"] for r in json.loads(ALPACA.read_text())]
    n_check = min(args.check, len(alpaca))
    n_brute = n_check if args.brute is None else min(args.brute, n_check)
    first = alpaca[:n_check]
    load0 = os.getloadavg()[0]
    rows = []

    def row(name, n, decisions, clock, ratio=""):
        rej = sum(decisions)
        rows.append(
            fmt_row(
                [
                    name,
                    f"{n:,}",
                    f"{n - rej:,}",
                    f"{rej:,}",
                    f"{clock.wall:.2f}",
                    f"{clock.cpu:.2f}",
                    f"{1e6 * clock.cpu / n:,.0f}",
                    ratio,
                ]
            )
        )

    # (a) exactness and speed against brute force on the first n_check candidates
    dec_q, det_q, clk_q, _ = best_of(args.repeats, seeds, first, "query")
    dec_d, _, clk_d, _ = best_of(args.repeats, seeds, first, "dup")
    assert dec_q == dec_d, "query and is_duplicate disagree"
    print(f"(a) index done ({clk_q.cpu:.2f} s CPU); brute force on {n_brute:,} candidates ...", flush=True)
    dec_b, det_b, clk_b, pairs_b = brute_pass(seeds, first[:n_brute])
    mismatch = [i for i in range(n_brute) if dec_b[i] != dec_q[i]]
    detail_ok = sum(
        1
        for i in range(n_brute)
        if det_b[i][0] == det_q[i][0] and det_b[i][1] == det_q[i][1] and det_b[i][2] == det_q[i][2]
    )
    if n_brute < n_check:
        tail = pruned_brute_decisions(
            seeds + [t for t, d in zip(first[:n_brute], dec_q) if not d], first[n_brute:], dec_q[n_brute:]
        )
        mismatch += [n_brute + i for i, d in enumerate(tail) if d != dec_q[n_brute + i]]
        # pairs brute force would score on all n_check candidates, given the (identical) decisions
        accepted, pairs_all = len(seeds), 0
        for d in dec_q:
            pairs_all += accepted
            accepted += not d
        scale = pairs_all / pairs_b
        brute_label = (
            f"brute force rouge_score, 1 process (timed on the first {n_brute:,}, extrapolated x{scale:.2f} by pairs)"
        )
    else:
        scale = 1.0
        brute_label = "brute force rouge_score, 1 process (Alpaca's loop)"

    class Scaled:
        wall, cpu = clk_b.wall * scale, clk_b.cpu * scale

    row(brute_label, n_check, dec_q, Scaled, "1x")
    row(
        "RougeIndex.query (max, top-10, mean)",
        n_check,
        dec_q,
        clk_q,
        f"{Scaled.cpu / clk_q.cpu:,.0f}x CPU, {Scaled.wall / clk_q.wall:,.0f}x wall",
    )
    row(
        "RougeIndex.is_duplicate (decision only)",
        n_check,
        dec_d,
        clk_d,
        f"{Scaled.cpu / clk_d.cpu:,.0f}x CPU, {Scaled.wall / clk_d.wall:,.0f}x wall",
    )
    exact_a = (
        f"(a) first {n_check:,}: decisions identical to brute force on {n_check - len(mismatch):,}/{n_check:,}"
        f" ({n_brute:,} by full brute force"
        + (", the rest by pruned brute force" if n_brute < n_check else "")
        + f"); max, top-10 scores and mean identical (==) on {detail_ok:,}/{n_brute:,}; "
        f"brute force scored {pairs_b:,} pairs at {1e6 * clk_b.cpu / pairs_b:.1f} us CPU each"
    )

    # (a') a stream with near-duplicates
    rng = random.Random(0)
    vocabulary = sorted({w for t in first[:2000] for w in tokenize(t)})
    stressed = [
        mutate(rng, rng.choice(seeds + first[: max(i, 1)]), vocabulary) if i % 4 == 3 else t
        for i, t in enumerate(first)
    ]
    dec_sq, _, clk_sq, _ = best_of(args.repeats, seeds, stressed, "query")
    dec_sd, _, clk_sd, _ = best_of(args.repeats, seeds, stressed, "dup")
    print("(a') pruned brute force on the near-duplicate stream ...", flush=True)
    with Clock() as clk_sp:
        dec_sp = pruned_brute_decisions(seeds, stressed)
    row("near-duplicate stream: pruned brute force (not Alpaca's)", n_check, dec_sp, clk_sp)
    row("near-duplicate stream: RougeIndex.query", n_check, dec_sq, clk_sq)
    row("near-duplicate stream: RougeIndex.is_duplicate", n_check, dec_sd, clk_sd)
    exact_s = (
        f"(a') near-duplicate stream: decisions identical on "
        f"{sum(a == b == c for a, b, c in zip(dec_sp, dec_sq, dec_sd)):,}/{n_check:,}"
    )

    # (b) the full pass, this RougeIndex and the one of --old
    growth_rows, same_as_old = [], ""
    if not args.skip_full:
        print("(b) full pass ...", flush=True)
        n = len(alpaca)
        old_cls = old_index(args.old) if args.old else None
        passes = [
            ("query (max, top-10, mean)", "query", True, 1),
            ("query (max, top-10, mean), workers=2", "query", True, 2),
            ("query, compute_mean=False", "query", False, 1),
            ("is_duplicate (decision only)", "dup", True, 1),
        ]
        results = {}
        for name, mode, mean, workers in passes:
            for label, cls in (("RougeIndex", RougeIndex), (f"RougeIndex of {args.old}", old_cls)):
                if cls is not None and (workers == 1 or cls is RougeIndex):
                    results[label, name] = best_of(
                        args.repeats_full, seeds, alpaca, mode, compute_mean=mean, index_cls=cls, workers=workers
                    )
        for (label, name), (dec, _, clk, growth) in results.items():
            old = results.get((f"RougeIndex of {args.old}", name.removesuffix(", workers=2")))
            ratio = (
                f"{old[2].cpu / clk.cpu:.2f}x CPU, {old[2].wall / clk.wall:.2f}x wall vs {args.old}"
                if old and label == "RougeIndex"
                else ""
            )
            row(f"full: {label}.{name}", n, dec, clk, ratio)
            growth_rows.append(fmt_row([f"{label}.{name}"] + [f"{growth[k]:,.0f}" for k in GROWTH]))
        decisions = {tuple(dec_) for dec_, _, _, _ in results.values()}
        assert len(decisions) == 1, "the full passes disagree"
        one, two = results["RougeIndex", passes[0][0]][1], results["RougeIndex", passes[1][0]][1]
        assert one == two, "workers=2 gives other scores than workers=1"
        if old_cls is not None:
            new_q, old_q = results["RougeIndex", passes[0][0]][1], results[f"RougeIndex of {args.old}", passes[0][0]][1]
            same = sum(a == b for a, b in zip(new_q, old_q))
            same_as_old = (
                f"(b) full stream: max, top-10 scores and mean identical (==) to the RougeIndex of "
                f"{args.old} on {same:,}/{n:,}"
            )
    with tempfile.TemporaryDirectory() as cache:
        cold, warm = first_use_seconds(cache), first_use_seconds(cache)

    print()
    print(
        f"ROUGE-L de-duplication, threshold {THRESHOLD}, top-10: 175 seeds indexed, then Alpaca's instructions in "
        f"file order as candidates"
    )
    print(
        f"{platform.python_version()} / numpy {np.__version__} / {os.cpu_count()} CPUs; "
        f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end; RougeIndex times are the best of "
        f"{args.repeats} runs in (a)/(a') and of {args.repeats_full} in (b), brute force runs once"
    )
    print()
    print(fmt_row(["pass", "candidates", "accepted", "rejected", "wall s", "CPU s", "CPU us/cand", "speed-up"]))
    print(fmt_row(["---"] * 8))
    for r in rows:
        print(r)
    print()
    if growth_rows:
        print()
        print(
            f"Wall us per candidate over the {WINDOW:,} candidates before the index held this many instructions "
            f"(best of {args.repeats_full}):"
        )
        print()
        print(fmt_row(["pass"] + [f"{k // 1000}K kept" for k in GROWTH]))
        print(fmt_row(["---"] * (len(GROWTH) + 1)))
        for r in growth_rows:
            print(r)
    print()
    print(
        f"first use in a fresh process (import, add, query, is_duplicate): {cold:.2f} s with an empty numba cache "
        f"(compiling), {warm:.2f} s with it filled"
    )
    print(exact_a)
    print(exact_s)
    if same_as_old:
        print(same_as_old)
    ok = (
        not mismatch
        and detail_ok == n_brute
        and exact_s.endswith(f"{n_check:,}/{n_check:,}")
        and (not same_as_old or same_as_old.endswith(f"{len(alpaca):,}/{len(alpaca):,}"))
    )
    print("EXACT" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
