"""Training throughput in real (non-padding) tokens/s of the tiny recipe on 2 CPU ranks, on data with the real
Alpaca length distribution: Alpaca's pad-to-longest vs length-grouped vs packed batches under ZeRO-3, and
ZeRO-3 vs torch FSDP (Alpaca's engine) on the same model, data and batches.

    /work/venv/bin/python benchmarks/bench_train.py                    # ~25 min on 2 vCPUs
    /work/venv/bin/python benchmarks/bench_train.py --reps 1 --steps 8 # a quick look

Data: --records records drawn at random (seed 0) from ../shared/data/alpaca/alpaca_data.json, written as JSONL
and built with `alpaca-ds data build` and the LLaMA tokenizer in ../shared/data/tokenizers/llama (max_length 512,
as Alpaca). Without ../shared/data the script says so and exits 0.

Model: launch/recipes/tiny.yaml's random LLaMA (hidden 64, 2 layers) with the LLaMA vocabulary (vocab_size 32000,
resized to 32001 for [PAD] by the trainer); everything else from the recipe except the --set overrides printed.
Each run is a fresh 2-rank launch of --steps optimizer steps; the first --warmup steps are dropped and the rate is
sum(real_tokens) / sum(seconds) over the rest, from the run's metrics.jsonl (the trainer's per-step window:
batch assembly, forward, backward, optimizer step). FSDP runs are tests/helpers/fsdp_reference.py (the
FSDP-equivalence test's reference: fully_shard per decoder layer + root, bf16 params, fp32 reduce, AdamW, clipping,
the same recipe, sampler and collator), launched with torch.distributed.run, timed and counted the same way.

Every optimizer step holds about the same number of examples (~32, ~4,000 real tokens) in every configuration, so
per-step costs (optimizer, gradient reduction) weigh the same per real token:
  pad modes      micro-batch 4 rows (Alpaca's per-device batch), global 32 rows (2 ranks x 4 accumulation)
  packed 512     micro-batch 4 rows of <= 512 tokens (~4 examples each), global 8 rows (no accumulation)
  packed 2048    micro-batch 1 row of <= 2048 tokens (~16 examples), global 2 rows (no accumulation)
All micro-batches have the same worst-case size (2,048 token slots), the memory bound that sets a micro-batch.
Configurations are interleaved round by round (the order rotates each round) and each round uses its own data
seed; ratios are taken within a round, between runs minutes apart, and the table shows their median and range.
OMP_NUM_THREADS=1 for every rank (torch.distributed.run's default; the deepspeed launcher sets none, which on this
2-vCPU machine would run 2 ranks x 2 threads).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ALPACA, LLAMA, ROOT, add_quiet_options, helpers_module, missing_alpaca_data, wait_for_quiet

RECIPE = ROOT / "launch" / "recipes" / "tiny.yaml"
GOAL_PACKED = 1.4

# name, engine, batching, pack_length, micro-batch rows, global rows
CONFIGS = {
    "pad": ("zero3", "random", 2048, 4, 32),
    "grouped": ("zero3", "length_grouped", 2048, 4, 32),
    "packed512": ("zero3", "packed", 512, 4, 8),
    "packed2048": ("zero3", "packed", 2048, 1, 2),
    "fsdp": ("fsdp", "random", 2048, 4, 32),
    # diagnostics, not run by default: packing with Alpaca's per-step micro-batch count; one big padded micro-batch
    "packed512m1": ("zero3", "packed", 512, 1, 8),
    "pad16": ("zero3", "random", 2048, 16, 32),
}
DEFAULT = ["pad", "grouped", "packed512", "packed2048", "fsdp"]
LABELS = {
    "pad": "random order, pad to longest (Alpaca)",
    "grouped": "length-grouped, pad to longest",
    "packed512": "packed to 512, micro 4",
    "packed2048": "packed to 2048, micro 1",
    "fsdp": "torch FSDP2, random, pad to longest",
    "packed512m1": "packed to 512, micro 1 (4 accumulation)",
    "pad16": "random order, pad to longest, micro 16",
}


def env(threads: int) -> dict:
    return {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }


def build_dataset(work: Path, records: int) -> Path:
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    subset = random.Random(0).sample(rows, min(records, len(rows)))
    src = work / "alpaca-subset.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in subset), encoding="utf-8")
    out = work / "alpaca-tokenized"
    cmd = [
        sys.executable,
        "-m",
        "alpaca_ds.cli",
        "data",
        "build",
        "--set",
        f"input={src}",
        "--set",
        f"tokenizer={LLAMA}",
        "--set",
        f"output={out}",
        "--set",
        "val_fraction=0",
        "--set",
        "workers=2",
        "--set",
        "max_length=512",
    ]
    result = subprocess.run(cmd, cwd=ROOT, env=env(1), capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"bench_train: data build failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return out


def overrides(name: str, dataset: Path, run_dir: Path, steps: int, seed: int) -> list[str]:
    import yaml

    _, batching, pack, micro, glob = CONFIGS[name]
    init = dict(yaml.safe_load(RECIPE.read_text())["model"]["init_config"], vocab_size=32000)
    # A nested --set (model.init_config.vocab_size=32000) keeps the value as the text "32000" inside this
    # free-form dict, so the whole init_config goes in as a flow mapping, whose values YAML types.
    return [
        f"output_dir={run_dir}",
        f"data.path={dataset}",
        f"model.tokenizer={LLAMA}",
        f"model.init_config={json.dumps(init)}",
        f"data.batching={batching}",
        f"data.pack_length={pack}",
        f"data.seed={seed}",
        f"batch.micro_batch_size={micro}",
        f"batch.global_batch_size={glob}",
        f"optim.max_steps={steps}",
        "log.every_steps=1",
        "log.eval_every_steps=0",
        "log.csv=false",
        "checkpoint.every_steps=1000",
    ]


def _ranks(root: int) -> list[int]:
    """The training processes under launcher `root`: descendants running the trainer or the FSDP worker."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            try:
                cmd = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if (
                ("alpaca_ds.train" in cmd or "fsdp_reference.py" in cmd)
                and "launcher" not in cmd
                and "torch.distributed.run" not in cmd
            ):
                found.append(child)
    return found


def _cpu_seconds(pids: list[int]) -> float:
    """user + system CPU time of `pids` (their own threads; the ranks start no worker processes)."""
    total = 0
    for pid in pids:
        try:
            fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def run_one(name: str, dataset: Path, run_dir: Path, steps: int, seed: int, threads: int) -> list[dict]:
    """One 2-rank launch; its metrics.jsonl rows, each with `cpu_seconds`: the ranks' CPU time in that step,
    sampled (every ~20 ms) when rank 0 wrote the row."""
    sets = overrides(name, dataset, run_dir, steps, seed)
    training = helpers_module("training")  # the tests' launch commands: the tiny recipe on 2 local ranks
    cmd = (training.deepspeed_command if CONFIGS[name][0] == "zero3" else training.fsdp_command)(*sets)
    metrics = run_dir / "metrics.jsonl"
    log = run_dir.parent / f"{run_dir.name}.log"
    cpu_at: list[float] = []  # ranks' CPU seconds when each metrics row appeared
    pids: list[int] = []
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(threads), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 1800
        while proc.poll() is None and time.monotonic() < deadline:
            if len(pids) < 2:
                pids = _ranks(proc.pid)
            if pids and metrics.is_file():
                lines = metrics.read_bytes().count(b"\n")
                if lines > len(cpu_at):
                    cpu = _cpu_seconds(pids)
                    cpu_at += [cpu] * (lines - len(cpu_at))
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = [r for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r] if metrics.is_file() else []
    if len(rows) < steps:
        sys.exit(f"bench_train: {name} run failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-4000:]}")
    if proc.returncode:  # every step ran and was logged; the failure came at teardown
        tail = [line for line in log.read_text().splitlines() if line.strip()][-1:]
        print(f"  note: {name} exited with {proc.returncode} after logging all {steps} steps ({tail})", flush=True)
    for k, r in enumerate(rows):
        r["cpu_seconds"] = cpu_at[k] - cpu_at[k - 1] if 0 < k < len(cpu_at) else None
    return rows


def rate(rows: list[dict], warmup: int) -> dict:
    kept = [r for r in rows if r["step"] > warmup]
    real, slots, secs = (sum(r[k] for r in kept) for k in ("real_tokens", "tokens", "seconds"))
    per_step = [r["real_tokens"] / r["seconds"] for r in kept]
    cpu = sum(r["cpu_seconds"] for r in kept if r["cpu_seconds"] is not None)
    return {
        "rate": real / secs,
        "cpu_rate": real / cpu if cpu else float("nan"),
        "s_per_step": secs / len(kept),
        "real_per_step": real / len(kept),
        "efficiency": real / slots,
        "step_cv": statistics.pstdev(per_step) / statistics.mean(per_step),
    }


def fmt_range(values: list[float], spec: str) -> str:
    return f"{min(values):{spec}}..{max(values):{spec}}" if len(values) > 1 else "-"


def bench(args) -> int:
    names = args.configs
    with tempfile.TemporaryDirectory(prefix="bench_train-") as td:
        work = Path(td)
        t = time.perf_counter()
        dataset = build_dataset(work, args.records)
        import numpy as np

        from alpaca_ds.dataset.shards import TokenizedDataset

        lengths = TokenizedDataset(dataset, "train").lengths
        q = np.percentile(lengths, [50, 90, 99])
        print(
            f"bench_train: {len(lengths)} Alpaca records (random sample, seed 0), LLaMA tokenizer, max_length 512, "
            f"built in {time.perf_counter() - t:.0f} s"
        )
        print(
            f"lengths: mean {lengths.mean():.1f}, median {q[0]:.0f}, p90 {q[1]:.0f}, p99 {q[2]:.0f}, "
            f"max {lengths.max()} tokens"
        )
        print(
            f"model: tiny.yaml init_config with vocab_size 32000 (+[PAD] = 32001); {args.steps} steps per run, "
            f"first {args.warmup} dropped; {args.reps} round(s), order rotated; OMP_NUM_THREADS={args.threads}; "
            f"load average at start {os.getloadavg()[0]:.2f}"
        )
        print(
            f"per run: --set {' --set '.join(overrides(names[0], Path('DATASET'), Path('RUN'), args.steps, 42))}"
            " (batching, pack_length, micro/global batch per configuration)",
            flush=True,
        )
        results: dict[str, list[dict]] = {n: [] for n in names}
        for rep in range(args.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                cores = wait_for_quiet(args.quiet, args.quiet_timeout, pause=3, n=5_000_000)
                load = os.getloadavg()[0]
                t = time.perf_counter()
                rows = run_one(name, dataset, work / f"run-{name}-{rep}", args.steps, 42 + rep, args.threads)
                r = rate(rows, args.warmup)
                r.update(load=load, cores=cores, wall=time.perf_counter() - t, rep=rep)
                results[name].append(r)
                print(
                    f"  round {rep + 1} {name:10s} {r['rate']:6.0f} real tok/s  {r['cpu_rate']:6.0f} per CPU-s  {r['s_per_step']:5.2f} s/step  "
                    f"{r['real_per_step']:6.0f} real tok/step  efficiency {100 * r['efficiency']:5.1f}%  "
                    f"step cv {100 * r['step_cv']:4.1f}%  cpu check {cores:.2f}  load {load:.2f}  ({r['wall']:.0f} s)",
                    flush=True,
                )
        report(results, args)
    return 0


def report(results: dict[str, list[dict]], args) -> None:
    def ratios(a: str, b: str, key: str = "rate") -> list[float]:
        return [x[key] / y[key] for x, y in zip(results[a], results[b])]

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print()
    modes = [n for n in results if CONFIGS[n][0] == "zero3"]
    if "pad" in results:
        header = (
            f"{'batching (ZeRO-3)':42s} {'real tok/s':>10s} {'min..max':>11s} {'x pad':>6s} {'min..max':>11s} "
            f"{'pad eff':>7s} {'tok/CPU-s':>9s} {'x pad':>6s} {'min..max':>11s}"
        )
        print(header)
        print("-" * len(header))
        for n in modes:
            x, xc = ratios(n, "pad"), ratios(n, "pad", "cpu_rate")
            eff = statistics.mean(r["efficiency"] for r in results[n])
            print(
                f"{LABELS[n]:42s} {med(n, 'rate'):10.0f} {fmt_range([r['rate'] for r in results[n]], '.0f'):>11s} "
                f"{statistics.median(x):5.2f}x {fmt_range(x, '.2f'):>11s} {100 * eff:6.1f}% "
                f"{med(n, 'cpu_rate'):9.0f} {statistics.median(xc):5.2f}x {fmt_range(xc, '.2f'):>11s}"
            )
        for n in ("packed512", "packed2048", "packed512m1"):
            if n in results:
                x = statistics.median(ratios(n, "pad"))
                print(
                    f"goal: {LABELS[n]} >= {GOAL_PACKED}x pad-to-longest in real tok/s: {x:.2f}x "
                    f"{'MET' if x >= GOAL_PACKED else 'NOT MET'}"
                )
        print()
    if "fsdp" in results and "pad" in results:
        header = (
            f"{'engine (random order, pad to longest)':42s} {'real tok/s':>10s} {'min..max':>11s} {'s/step':>7s} "
            f"{'tok/CPU-s':>9s}"
        )
        print(header)
        print("-" * len(header))
        for n, label in (("pad", "DeepSpeed ZeRO-3 (alpaca-ds trainer)"), ("fsdp", "torch FSDP2 (fully_shard)")):
            print(
                f"{label:42s} {med(n, 'rate'):10.0f} {fmt_range([r['rate'] for r in results[n]], '.0f'):>11s} "
                f"{med(n, 's_per_step'):7.2f} {med(n, 'cpu_rate'):9.0f}"
            )
        x, xc = ratios("pad", "fsdp"), ratios("pad", "fsdp", "cpu_rate")
        print(
            f"ZeRO-3 / FSDP, real tok/s: {statistics.median(x):.2f}x (rounds: {', '.join(f'{v:.2f}' for v in x)}); "
            f"per CPU-s: {statistics.median(xc):.2f}x (rounds: {', '.join(f'{v:.2f}' for v in xc)})"
        )
        print()
    loads = [r["load"] for rs in results.values() for r in rs]
    cores = [r["cores"] for rs in results.values() for r in rs]
    cvs = [r["step_cv"] for rs in results.values() for r in rs]
    print(
        f"noise: cpu check before each run {min(cores):.2f}..{max(cores):.2f} cores (2.00 = two free cores; a run "
        f"starts once >= {args.quiet} or after {args.quiet_timeout:.0f} s); load average at run starts "
        f"{min(loads):.2f}..{max(loads):.2f}; step-to-step cv of real tok/s within a run "
        f"{100 * min(cvs):.0f}..{100 * max(cvs):.0f}% (steps also differ in length)"
    )
    print(
        "real tok/s = sum(real_tokens) / sum(seconds) over the kept steps, both ranks (the trainer's metrics.jsonl); "
        "x pad = median\nover rounds of the ratio to the same round's pad-to-longest run; pad eff = real tokens / "
        "token slots computed; tok/CPU-s = real\ntokens per CPU second of the two ranks in the same steps (sampled "
        "from /proc, barely moved by other load, blind to waiting)."
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=4000, help="Alpaca records to sample and build")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the rate")
    ap.add_argument("--reps", type=int, default=4, help="rounds of all configurations, interleaved")
    add_quiet_options(ap, 1.7, 90)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per rank")
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=DEFAULT)
    args = ap.parse_args()
    if missing_alpaca_data("bench_train"):
        return 0
    if args.warmup >= args.steps:
        ap.error("--warmup must be below --steps")
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
