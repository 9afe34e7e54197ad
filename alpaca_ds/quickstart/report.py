"""RUN/report.md: what the quickstart did, with every number read from the files the stages wrote in RUN.

generation: generated/stats.json + cost.json; dataset: tokenized/manifest.json; training: run/metrics.jsonl,
run/config.resolved.yaml, run/ds_config.json, run/loss.png; export: quickstart.json (the step's verification);
evaluation: eval/*/model_outputs.json, eval/judge/winrate.json + cost.json; times: quickstart.json.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

from alpaca_ds.common.io import atomic_write_bytes
from alpaca_ds.quickstart.layout import GENERATOR, HAND_URL, REFERENCE, STEPS, hand_commands, short, stage_configs
from alpaca_ds.train.metrics import read_metrics

ALPACA_SIZE = 52_002


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _usd(x) -> str:
    return "n/a" if x is None else f"${x:,.4f}"


def _n(x) -> str:
    return "n/a" if x is None else f"{x:,}"


def _f(x, digits=4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _clip(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return (text[:n] + " …") if len(text) > n else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def training_summary(run_dir: Path) -> dict:
    rows = read_metrics(run_dir / "metrics.jsonl")
    val = [r for r in rows if r.get("val_loss") is not None]
    steady = [r["tokens_per_s"] for r in rows[1:]] or [r["tokens_per_s"] for r in rows]  # step 1 holds the warm-up
    resolved = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    ds = _json(run_dir / "ds_config.json")
    return {
        "steps": rows[-1]["step"],
        "first_loss": rows[0]["loss"],
        "last_loss": rows[-1]["loss"],
        "val_loss": val[-1]["val_loss"] if val else None,
        "val_step": val[-1]["step"] if val else None,
        "val_losses": [(r["step"], r["val_loss"]) for r in val],
        "tokens_per_s": statistics.median(steady),
        "real_tokens": sum(r["real_tokens"] for r in rows),
        "step_seconds": sum(r["seconds"] for r in rows),
        "epochs": rows[-1]["epoch"],
        "global_batch": ds["train_batch_size"],
        "micro": ds["train_micro_batch_size_per_gpu"],
        "accumulation": ds["gradient_accumulation_steps"],
        "zero_stage": ds["zero_optimization"]["stage"],
        "bf16": ds.get("bf16", {}).get("enabled", False),
        "lr": resolved["optim"]["lr"],
        "model": resolved["model"]["init_config"] or resolved["model"]["name_or_path"],
    }


def write_report(cfg, paths, state: dict) -> Path:
    root = paths.root
    settings = stage_configs(cfg, paths, HAND_URL)
    train, answer = settings["train"], settings["answer"]
    steps = state["steps"]
    env = state["invocations"][-1]["environment"]
    stats = _json(paths.generated / "stats.json")
    cost = _json(paths.generated / "cost.json")
    manifest = _json(paths.tokenized / "manifest.json")
    tr = training_summary(paths.run)
    answers = _json(paths.answers)
    reference = _json(paths.reference)
    win = _json(paths.judge / "winrate.json")
    judge_cost = _json(paths.judge / "cost.json")
    annotations = _json(paths.judge / "annotations.json")
    export = steps["export"]
    o = win["overall"]
    total = sum(steps[s]["seconds"] for s in STEPS)
    lines: list[str] = []
    add = lines.append

    add("# alpaca-ds quickstart report")
    add("")
    add(
        f"The whole pipeline, offline, on {env['cpus']} CPU cores ({env['system']} {env['machine']}, Python "
        f"{env['python']}, torch {env['torch']}, DeepSpeed {env['deepspeed']}, transformers {env['transformers']}): "
        f"**{total:.0f} s** over the six steps. Every number below is read from the files this run wrote in "
        f"`{root}`."
    )
    add("")
    add(
        "> **Simulated teacher and judge.** Generation and judging ran against alpaca-ds's local teacher "
        "*simulator* (`alpaca-ds teacher serve`), not a language model: it recombines seed content into Alpaca's "
        "response format, and its judge mode picks the answer that shares more words with the instruction. The "
        "model is a 2-layer random LLaMA. The numbers measure the machinery — requests, filters, tokens, dollars at "
        "real prices, ZeRO-3 training, export, judging — not the quality of a model."
    )
    add("")
    add("| step | what | seconds |")
    add("|---|---|---:|")
    what = {
        "generate": f"{stats['accepted']} instructions, {stats['requests']['succeeded']} requests to the simulator",
        "data": f"{manifest['counts']['examples']} examples tokenized",
        "train": f"{tr['steps']} steps, ZeRO-{tr['zero_stage']}, {steps['train'].get('ranks')} CPU ranks"
        + (
            f" (incl. ~{steps['train'].get('compile_seconds', 0):.0f} s compiling DeepSpeed's CPU comm op, "
            "once per machine and environment)"
            if steps["train"].get("compiled_comm_op")
            else ""
        ),
        "export": "last checkpoint -> HF folder, verified",
        "answer": f"{len(answers)} answers",
        "judge": f"{len(annotations)} pairs, both orders",
    }
    for s in STEPS:
        add(f"| {s} | {what[s]} | {steps[s]['seconds']:.1f} |")
    add(f"| **total** | | **{total:.1f}** |")
    add("")

    # ---------------------------------------------------------------- generation
    add("## 1. Generate: self-instruct data from the teacher")
    add("")
    req = stats["requests"]
    add(
        f"Teacher: the local simulator, asked as `{cost['model']}` (tokens counted with tiktoken "
        f"`{cost['encoding']}`). **{stats['accepted']}/{stats['target']}** instructions accepted from "
        f"{stats['candidates']['parsed']} parsed candidates; {req['sent']} requests sent, {req['succeeded']} "
        f"succeeded, {req['failed']} failed, {req['retries']} retries. Output: `generated/regen.json` "
        "(Alpaca's format), `accepted.jsonl`, the request ledger `responses.jsonl`."
    )
    add("")
    add("Filter statistics (Alpaca's filters, then ROUGE-L > 0.7 against the seeds and every kept instruction):")
    add("")
    add("| candidates | count |")
    add("|---|---:|")
    add(f"| accepted | {stats['candidates']['accepted']} |")
    for reason, count in sorted(stats["candidates"]["rejected"].items(), key=lambda kv: -kv[1]):
        add(f"| rejected: {reason} | {count} |")
    for reason, count in sorted(stats["candidates"].get("dropped_blocks", {}).items()):
        add(f"| dropped block: {reason} | {count} |")
    if stats["candidates"].get("unused_after_target"):
        add(f"| unused (target already reached) | {stats['candidates']['unused_after_target']} |")
    add("")

    # ---------------------------------------------------------------- cost
    add("## Cost")
    add("")
    add(
        "What the simulator's token counts would cost at the real models' prices (`alpaca_ds/api/prices.yaml`); "
        "this run itself cost nothing. Each budget is a hard limit, as it is against a paid API."
    )
    add("")
    add("| step | priced as | requests | prompt tokens | completion tokens | cost | budget |")
    add("|---|---|---:|---:|---:|---:|---:|")
    add(
        f"| generate | {cost['model']} (${cost['prices_usd_per_1m']['prompt']:g} / "
        f"${cost['prices_usd_per_1m']['completion']:g} per 1M) | {req['attempts']} | {_n(cost['prompt_tokens'])} | "
        f"{_n(cost['completion_tokens'])} | {_usd(cost['spent_usd'])} | {_usd(cost['budget']['max_usd'])} |"
    )
    jp = judge_cost.get("prices_usd_per_1m") or {}
    add(
        f"| judge | {judge_cost.get('model')} (${jp.get('prompt', 0):g} / ${jp.get('completion', 0):g} per 1M) | "
        f"{2 * len(annotations)} | {_n(judge_cost.get('prompt_tokens'))} | {_n(judge_cost.get('completion_tokens'))} | "
        f"{_usd(judge_cost.get('spent_usd'))} | {_usd((judge_cost.get('budget') or {}).get('max_usd'))} |"
    )
    add(f"| train + export + answer | {steps['train'].get('ranks')} CPU ranks, this machine | | | | $0 | |")
    add("")
    if cost.get("usd_per_accepted"):
        add(
            f"{_usd(cost['usd_per_accepted'])} per accepted instruction here; at that rate Alpaca's "
            f"{ALPACA_SIZE:,} would cost about **${cost['usd_per_accepted'] * ALPACA_SIZE:,.2f}** with "
            f"{cost['model']} (an extrapolation from the simulator's answer lengths and acceptance rate; a small "
            "run overpays per instruction, since the requests in flight when the target is reached are paid for; "
            "`alpaca-ds generate --dry-run` estimates a real run from its real prompts)."
        )
        add("")

    # ---------------------------------------------------------------- dataset
    add("## 2. Data build: the tokenized dataset")
    add("")
    c = manifest["counts"]
    tok = manifest["tokenizer"]
    add(
        f"`tokenized/` (manifest.json written last): {c['records']} records -> {c['examples']} examples; "
        f"truncated {c['truncated']}, dropped {c['dropped_overlength']}, invalid {c['invalid_skipped']}, "
        f"without supervised tokens {c['no_supervised_tokens']}. Tokenizer `{short(tok['name_or_path'])}` "
        f"(sha256 {tok['sha256'][:12]}…, via {tok['encoder']}; vocabulary {tok['vocab_size']} including "
        f"{', '.join(tok['added_special_tokens'].values()) or 'no'} added as Alpaca adds it), max length "
        f"{manifest['max_length']}, Alpaca's prompt template; prompt tokens are labelled -100."
    )
    add("")
    add("| split | examples | tokens | supervised tokens |")
    add("|---|---:|---:|---:|")
    for name, s in manifest["splits"].items():
        add(f"| {name} | {s['examples']} | {_n(s['tokens'])} | {_n(s.get('label_tokens'))} |")
    add("")

    # ---------------------------------------------------------------- training
    add("## 3. Train: DeepSpeed ZeRO-3 on CPU ranks")
    add("")
    model = tr["model"]
    arch = (
        f"random LLaMA, {model.get('num_hidden_layers')} layers, hidden {model.get('hidden_size')}"
        if isinstance(model, dict)
        else f"`{model}`"
    )
    add(
        f"Recipe `{Path(cfg.recipe).name}` ({arch}), engine `{Path(train.ds_config).name}`: ZeRO stage "
        f"{tr['zero_stage']}, bf16 {'on' if tr['bf16'] else 'off'}, {steps['train'].get('ranks')} ranks started by the "
        f"deepspeed launcher; global batch {tr['global_batch']} = micro-batch {tr['micro']} × accumulation "
        f"{tr['accumulation']} × world {steps['train'].get('ranks')}; lr {tr['lr']:g}, cosine with warmup."
    )
    add("")
    add("| | |")
    add("|---|---:|")
    add(f"| optimizer steps | {tr['steps']} ({tr['epochs']:g} epochs) |")
    add(f"| train loss, first step | {_f(tr['first_loss'])} |")
    add(f"| train loss, last step | {_f(tr['last_loss'])} |")
    add(f"| validation loss (step {tr['val_step']}) | {_f(tr['val_loss'])} |")
    add(f"| tokens/s (median over steps, real tokens, all ranks) | {tr['tokens_per_s']:,.0f} |")
    add(f"| real tokens trained on | {_n(tr['real_tokens'])} |")
    add(
        f"| time in steps / whole step incl. launcher start, model init and export | {tr['step_seconds']:.1f} s / "
        f"{steps['train']['seconds']:.1f} s |"
    )
    add("")
    add("![loss curve](run/loss.png)")
    add("")
    add(
        "`run/metrics.jsonl` has every step (loss, lr, grad norm, tokens/s, memory); `run/checkpoints/` the "
        "DeepSpeed checkpoints; `run/final/` the trainer's own export; `run/train.log` the launcher's output."
    )
    add("")

    # ---------------------------------------------------------------- export
    add("## 4. Export: a verified Hugging Face folder")
    add("")
    add(
        f"`alpaca-ds export` consolidated `{_rel(Path(export['checkpoint']), root)}` into `export/` (config, "
        f"safetensors, tokenizer, generation config), reloaded it with transformers and compared its logits with "
        f"the checkpoint's weights on a fixed batch: max |difference| **{export['logits_max_diff']:.3g}**. Its "
        f"tensors against `run/final/` (exported by the trainer from the live engine): max |difference| "
        f"**{export['max_tensor_diff_vs_final']:.3g}**."
    )
    add("")

    # ---------------------------------------------------------------- evaluation
    add("## 5–6. Evaluate: answers and a judged win rate")
    add("")
    add(
        f"`evaluate answer` wrote **{len(answers)}** answers of `export/` (generator `{GENERATOR}`, Alpaca's "
        f"prompt template, temperature {answer.decoding.temperature:g}, at most {answer.decoding.max_new_tokens} new "
        f"tokens) to the first {len(answers)} tasks of `{short(answer.eval_set)}`, never "
        f"trained on here; the reference (`{REFERENCE}`) is those tasks' own outputs. The judge (the simulator's "
        "judge mode, asked in both orders to cancel position bias) preferred:"
    )
    add("")
    wr = "n/a" if o["win_rate"] is None else f"{o['win_rate']:.1f}%"
    se = "n/a" if o["standard_error"] is None else f"{o['standard_error']:.1f}"
    add(
        f"**win rate of {GENERATOR} over the reference: {wr} ± {se}** (standard error; {o['n_total']} pairs: "
        f"wins {o['n_wins']}, losses {o['n_wins_base']}, ties {o['n_draws']}). `eval/judge/` holds "
        "`annotations.json` (AlpacaEval's format), `winrate.md`, the call ledger and `cost.json`."
    )
    add("")
    if answers and reference:
        add("| instruction | reference | quickstart-tiny |")
        add("|---|---|---|")
        for a, r in list(zip(answers, reference))[:3]:
            add(
                f"| {_cell(_clip(a['instruction'], 80))} | {_cell(_clip(r['output'], 80))} | "
                f"{_cell(_clip(a['output'], 80))} |"
            )
        add("")

    # ---------------------------------------------------------------- by hand
    add("## Each step by hand")
    add("")
    cwd = state["invocations"][-1].get("cwd")
    add(
        f"The same steps as commands (from `{cwd}`), with this run's configs in `{paths.configs}/`. Rerun in "
        "this run's folders, each finds its work done (or continues it); point `--set out_dir=...` / `output=...` "
        "/ `output_dir=...` elsewhere to redo one."
    )
    add("")
    add("```sh")
    for command in hand_commands(cfg, paths, settings, export["checkpoint"]):
        add(command)
    add("```")
    add("")
    add("## Next: the real Alpaca 7B")
    add("")
    add("```sh")
    add("export OPENAI_API_KEY=...                                                     # a real teacher")
    add("alpaca-ds generate --config launch/recipes/self_instruct_openai.yaml --dry-run   # requests, tokens, $ first")
    add("alpaca-ds data build --config data/alpaca.yaml --set tokenizer=huggyllama/llama-7b")
    add("alpaca-ds plan --config launch/recipes/alpaca_7b.yaml --nodes 1 --gpus-per-node 8   # memory, time, $")
    add("alpaca-ds train --config launch/recipes/alpaca_7b.yaml --num-gpus 8")
    add("```")
    add("")
    text = "\n".join(lines)
    atomic_write_bytes(paths.report, text.encode("utf-8"))
    return paths.report
