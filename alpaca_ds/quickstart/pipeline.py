"""`alpaca-ds quickstart`: the whole pipeline, offline, on CPU, in a few minutes, ending in a report.

    alpaca-ds quickstart                          # -> runs/quickstart/report.md
    alpaca-ds quickstart --quick --out /tmp/qs    # the smaller variant (CI, tests/integration/test_quickstart.py)

An orchestrator over the stages, each called as its command calls it (in-process, except training, which runs
through DeepSpeed's own launcher), each in its own folder of the run directory:

  1 generate  the local teacher SIMULATOR on a loopback port; self-instruct from seeds/  -> generated/
  2 data      data build with the tokenizer shipped in data/tokenizer                     -> tokenized/
  3 train     the tiny recipe, ZeRO-3 on 2 CPU ranks, deepspeed launcher                  -> run/
  4 export    `alpaca-ds export` of the last checkpoint, reloaded and verified            -> export/
  5 answer    `evaluate answer` on held-out tasks (the sample in data/, never trained on) -> eval/
  6 judge     `evaluate judge` against the tasks' reference outputs, through the simulator's judge mode
then report.md, from the run's own files. configs/ holds each step's config, for running it by hand.

Resume: RUN/quickstart.json records each finished step. A rerun skips a finished step whose output is still
there; once a step runs, every later step runs again. A step interrupted half-way continues where it stopped,
since every stage resumes by itself (the generator's and judge's ledgers, the trainer's checkpoints, the
answers' partial file). A different configuration in the same run directory is refused.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.lock import exclusive
from alpaca_ds.config import Schema
from alpaca_ds.evaluate.config import AnswerConfig
from alpaca_ds.quickstart.config import QuickstartConfig
from alpaca_ds.quickstart.layout import (
    GENERATOR,
    HAND_URL,
    REFERENCE,
    STEPS,
    Paths,
    short,
    stage_configs,
    write_hand_configs,
)
from alpaca_ds.quickstart.report import write_report
from alpaca_ds.quickstart.result import QuickstartResult
from alpaca_ds.quickstart.state import State, environment, now

# ---------------------------------------------------------------------------------------------- the steps


class Context:
    def __init__(self, cfg: QuickstartConfig, paths: Paths, hand: dict[str, Path], echo, stack: ExitStack):
        self.cfg, self.paths, self.hand, self.echo, self.stack = cfg, paths, hand, echo, stack
        self.settings = stage_configs(cfg, paths, HAND_URL)  # each step's settings, as in configs/
        self._teacher = None

    @property
    def teacher(self):
        """The local teacher simulator, started on first use and stopped when the quickstart ends."""
        if self._teacher is None:
            from alpaca_ds.simulator.local import LocalSimulator

            self._teacher = self.stack.enter_context(
                LocalSimulator(self.settings["generate"].seed_tasks, seed=self.settings["generate"].seed)
            )
            self.echo(f"      local teacher simulator listening on {self._teacher.base_url}")
        return self._teacher

    def configs(self) -> dict[str, Schema]:
        return stage_configs(self.cfg, self.paths, self.teacher.base_url)


class Interrupted(Exception):
    """A stage stopped on an interrupt and saved its progress."""


def describe(step: str, ctx: Context) -> str:
    p, s = ctx.paths, ctx.settings
    g, d, t, a = s["generate"], s["data"], s["train"], s["answer"]
    if step == "generate":
        return (
            f"generate: {g.num_instructions} instructions from {short(g.seed_tasks)} by the local teacher "
            f"SIMULATOR, budget ${g.budget.max_usd:.2f} at {g.api.model} prices -> {p.generated}"
        )
    if step == "data":
        return (
            f"data build: tokenize {p.generated / 'regen.json'} with {short(d.tokenizer)} (max length "
            f"{d.max_length}, {d.val_fraction:.0%} validation) -> {p.tokenized}"
        )
    if step == "train":
        stage, o = _zero_stage(t.ds_config), t.optim
        return (
            f"train: {Path(ctx.cfg.recipe).stem} recipe, ZeRO-{stage} on {ctx.cfg.ranks} CPU ranks through the "
            f"deepspeed launcher, {o.epochs} epochs"
            + (f" (at most {o.max_steps} steps)" if o.max_steps else "")
            + f" -> {p.run}"
        )
    if step == "export":
        return f"export: consolidate the last checkpoint of {p.run} into {p.export} and verify its logits"
    if step == "answer":
        return (
            f"evaluate answer: {a.limit} held-out tasks from {short(a.eval_set)} with {p.export} "
            f"(at most {a.decoding.max_new_tokens} new tokens) -> {p.answers.parent}"
        )
    return (
        f"evaluate judge: {GENERATOR} vs the tasks' reference outputs, both orders, by the simulator's judge "
        f"mode -> {p.judge}"
    )


def _zero_stage(ds_config: str):
    try:
        return yaml.safe_load(Path(ds_config).read_text())["zero_optimization"]["stage"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return "?"


def step_generate(ctx: Context) -> dict:
    from alpaca_ds.generate import run as gen

    result = gen.run(ctx.configs()["generate"])
    if result.exit_code == 130:
        raise Interrupted("generate")
    if result.exit_code != 0:
        raise UserError(
            f"generate stopped: {result.message} (raise generate.budget.max_usd with --set if the "
            "budget stopped it, then rerun)"
        )
    ctx.echo(
        f"      {result.accepted}/{result.target} instructions accepted, "
        f"{result.stats['requests']['succeeded']} requests, ${result.cost['spent_usd']:.4f} at "
        f"{result.cost['model']} prices"
    )
    return {"accepted": result.accepted, "teacher": ctx.teacher.base_url}


def step_data(ctx: Context) -> dict:
    from alpaca_ds.dataset import build

    result = build.run(ctx.configs()["data"])
    ctx.echo(f"      {result.counts['records']} records -> {result.splits()}")
    return {"examples": result.counts["examples"]}


def extensions_dir() -> Path:
    """Where torch keeps JIT-compiled extensions (torch.utils.cpp_extension's default, without importing torch)."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")


def comm_op_build() -> tuple[float, float] | None:
    """(mtime of build.ninja, of the .so) of DeepSpeed's JIT-compiled CPU communication op, None before the first.

    The ranks compile it at start when it is missing, and again when the cached one was built for another
    environment (another virtualenv's include paths), e.g. the first quickstart in a fresh virtualenv.
    """
    root = extensions_dir()
    for folder in [*root.glob("*/deepspeed_shm_comm"), root / "deepspeed_shm_comm"]:
        so, ninja = folder / "deepspeed_shm_comm.so", folder / "build.ninja"
        if so.is_file() and ninja.is_file():
            return ninja.stat().st_mtime, so.stat().st_mtime
    return None


def step_train(ctx: Context) -> dict:
    from alpaca_ds.cluster.launch import launcher_command, train_args
    from alpaca_ds.cluster.runner import run_launcher
    from alpaca_ds.common.serving import free_port

    cfg = ctx.cfg
    before = comm_op_build()
    if before is None:
        ctx.echo(
            "      first DeepSpeed run on this machine: the ranks compile its CPU communication op once (about "
            f"a minute on 2 cores; cached in {extensions_dir()})"
        )
    started = time.time()
    config = ctx.hand["train"]
    # a free rendezvous port: another DeepSpeed job on this machine (a test, a second quickstart) may hold 29500
    command = launcher_command(train_args(str(config)), num_gpus=cfg.ranks, master_port=free_port())
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore::FutureWarning", "PYTHONUNBUFFERED": "1"}
    ctx.echo(f"      + {shlex.join(command)}")
    ctx.echo(f"      (the launcher's full output: {ctx.paths.train_log})")
    code = run_launcher(
        command, env, marker=str(config), log_path=ctx.paths.train_log, pid_file=ctx.paths.train_pid, say=ctx.echo
    )
    if code != 0:
        raise UserError(f"training failed (exit status {code}); the full log is {ctx.paths.train_log}")
    after = comm_op_build()
    compiled = after is not None and after != before and after[1] >= started
    return {
        "ranks": cfg.ranks,
        "compiled_comm_op": compiled,
        "compile_seconds": round(after[1] - max(after[0], started), 1) if compiled else 0.0,
    }


def step_export(ctx: Context) -> dict:
    os.environ["DS_ACCELERATOR"] = "cpu"  # zero_to_fp32 imports deepspeed, which would look for a GPU
    from alpaca_ds.train.checkpoint import latest_tag
    from alpaca_ds.train.export import export_checkpoint

    checkpoints = ctx.paths.run / "checkpoints"
    tag = latest_tag(checkpoints)
    if tag is None:
        raise UserError(f"{checkpoints}: no complete checkpoint to export")
    diff = export_checkpoint(checkpoints / tag, ctx.paths.export)
    same = _max_tensor_diff(ctx.paths.export, ctx.paths.run / "final")
    ctx.echo(
        f"      exported {checkpoints / tag} -> {ctx.paths.export}: reloaded logits within {diff:.2g} of the "
        f"checkpoint's weights; tensors vs the trainer's own export run/final: max |diff| {same:.2g}"
    )
    return {"checkpoint": str(checkpoints / tag), "logits_max_diff": diff, "max_tensor_diff_vs_final": same}


def _max_tensor_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    ta = {k: v for f in sorted(a.glob("*.safetensors")) for k, v in load_file(f).items()}
    tb = {k: v for f in sorted(b.glob("*.safetensors")) for k, v in load_file(f).items()}
    if set(ta) != set(tb):
        return float("inf")
    return max((float((ta[k].float() - tb[k].float()).abs().max()) for k in ta), default=0.0)


def write_reference(answer: AnswerConfig, paths: Paths) -> int:
    """The eval tasks' own outputs (written for the sample by people), as the reference model_outputs.json."""
    from alpaca_ds.common.jsonfile import read_all
    from alpaca_ds.evaluate.answers import write_outputs
    from alpaca_ds.evaluate.eval_sets import load_eval_set, output_record, set_path

    path = set_path(answer.eval_set, ".")
    items = load_eval_set(answer.eval_set, ".")[: answer.limit]
    records = [rec for _, rec in read_all(path, "eval set")][: answer.limit]
    if any(not isinstance(r.get("output"), str) or not r["output"].strip() for r in records):
        raise UserError(
            f"{path}: the quickstart judges against the eval set's own `output`s; every one of the first "
            f"{answer.limit} records needs one"
        )
    write_outputs(paths.reference, [output_record(i, r["output"], REFERENCE) for i, r in zip(items, records)])
    return len(records)


def step_answer(ctx: Context) -> dict:
    from alpaca_ds.evaluate import answers

    n = write_reference(ctx.settings["answer"], ctx.paths)
    result = answers.run(ctx.settings["answer"])  # answers call no teacher: the settings as written
    ctx.echo(
        f"      {result.answers} answers by {result.generator} -> {result.output}; {n} reference "
        f"outputs -> {ctx.paths.reference}"
    )
    return {"answers": result.answers}


def step_judge(ctx: Context) -> dict:
    from alpaca_ds.evaluate import judge

    result = judge.run(ctx.configs()["judge"])
    if result.exit_code == 130:
        raise Interrupted("judge")
    if result.exit_code != 0 or result.report is None:
        raise UserError(f"evaluate judge stopped: {result.message or 'no pair judged'}; rerun to continue")
    o = result.report["overall"]
    wr = "n/a" if o["win_rate"] is None else f"{o['win_rate']:.1f}%"
    se = "n/a" if o["standard_error"] is None else f"{o['standard_error']:.1f}"
    ctx.echo(
        f"      {result.judged}/{result.pairs} pairs judged; win rate of {GENERATOR} over the reference: {wr} ± {se}"
    )
    return {"judged": result.judged}


STEP_FUNCS = {
    "generate": step_generate,
    "data": step_data,
    "train": step_train,
    "export": step_export,
    "answer": step_answer,
    "judge": step_judge,
}


# ---------------------------------------------------------------------------------------------- the run


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _on_sigterm(handler) -> None:
    """SIGTERM stops the quickstart as Ctrl-C does (only settable from the main thread; elsewhere left alone)."""
    try:
        signal.signal(signal.SIGTERM, handler if handler is not None else signal.SIG_DFL)
    except ValueError:
        pass


def run(cfg: QuickstartConfig, echo=print, quick: bool = False) -> QuickstartResult:
    """Run (or continue) the quickstart in cfg.out_dir."""
    paths = Paths(cfg.out_dir)
    started = time.monotonic()
    lock = exclusive(paths.root, "alpaca-ds quickstart")
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    current = state = None
    t0 = started
    ran, skipped = [], []
    try:
        state = State(paths, cfg)
        from alpaca_ds.cluster.runner import stop_leftover

        stop_leftover(paths.train_pid, str(paths.configs / "train.yaml"), say=echo)
        hand = write_hand_configs(cfg, paths)
        state.data["invocations"].append(
            {"started": now(), "quick": quick, "argv": sys.argv[1:], "cwd": os.getcwd(), "environment": environment()}
        )
        state.save()
        echo(
            f"alpaca-ds quickstart -> {paths.root}{' (--quick)' if quick else ''}: generate, data build, train, "
            "export, evaluate, offline on CPU"
        )
        with ExitStack() as stack:
            ctx = Context(cfg, paths, hand, echo, stack)
            redo = False
            for number, step in enumerate(STEPS, 1):
                prefix = f"[{number}/{len(STEPS)}]"
                finished = state.done(step)
                if finished and not redo and paths.output(step).exists():
                    echo(f"{prefix} {step}: done in an earlier run ({finished['seconds']:.1f} s), skipped")
                    skipped.append(step)
                    continue
                redo = True  # every later step depends on this one's output
                state.forget_from(step)
                state.save()
                echo(f"{prefix} {describe(step, ctx)}")
                _on_sigterm(_raise_interrupt)  # the stages' own handlers (generate, judge) reset it to the default
                current, t0 = step, time.monotonic()
                info = STEP_FUNCS[step](ctx)
                seconds = time.monotonic() - t0
                current = None
                state.finish(step, seconds, info)
                ran.append(step)
                echo(f"      done in {seconds:.1f} s")
        seconds = time.monotonic() - started
        state.data["invocations"][-1].update(
            {"finished": now(), "seconds": round(seconds, 2), "ran": ran, "skipped": skipped}
        )
        state.save()
        report = write_report(cfg, paths, state.data)
        step_seconds = sum(s["seconds"] for s in state.data["steps"].values())
        result = QuickstartResult(0, "", str(report), seconds, ran, skipped, step_seconds)
        echo(result.summary())
        return result
    except (KeyboardInterrupt, Interrupted):
        if current is not None and state is not None:
            state.interrupted(current, time.monotonic() - t0)
        where = f" during {current}" if current else ""
        message = (
            f"interrupted{where}; rerun the same command to continue (finished "
            f"steps are kept, and {current or 'the step'} continues where it stopped)"
        )
        return QuickstartResult(130, message, None, time.monotonic() - started, ran, skipped)
    finally:
        _on_sigterm(previous_sigterm)
        lock.release()
