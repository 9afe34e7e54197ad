"""`alpaca-ds evaluate ...`, `chat`, `serve` and `demo`: each loads its config and calls one function of
alpaca_ds/evaluate."""

from __future__ import annotations

import json

import click

from alpaca_ds.commands.options import CONFIG, SET, finish, flags
from alpaca_ds.config import load_config


@click.group("evaluate")
def evaluate_group():
    """Answers on eval sets, pairwise judging, win rates, and a human A/B page."""


@evaluate_group.command("answer")
@CONFIG
@SET
@click.option("--model", help="Exported model folder (RUN/final), or an OpenAI-compatible endpoint URL ending in /v1.")
@click.option("--eval-set", help="selfinstruct (252), alpaca_eval (805) or a JSON/JSONL file [default: selfinstruct].")
@click.option("--output", help="model_outputs.json to write [default: eval/<generator>/<eval set>/model_outputs.json].")
def evaluate_answer(config_path, overrides, model, eval_set, output):
    """Answer an eval set with Alpaca's prompt template; writes AlpacaEval's model_outputs.json shape.

    Rerunning after a crash continues where it stopped.
    """
    from alpaca_ds.evaluate import answers
    from alpaca_ds.evaluate.config import AnswerConfig

    endpoint = model is not None and model.startswith(("http://", "https://"))
    extra = flags(
        **{
            "api.base_url": model if endpoint else None,
            "model": None if endpoint else model,
            "eval_set": eval_set,
            "output": output,
        }
    )
    cfg = load_config(AnswerConfig, config_path, (*extra, *overrides))
    click.echo(answers.run(cfg).summary())


@evaluate_group.command("reference")
@click.option("--eval-set", default="selfinstruct", show_default=True, help="selfinstruct or alpaca_eval.")
@click.option("--data-dir", default="../shared/data", show_default=True, help="Where the named sets are.")
@click.option("--output", required=True, help="model_outputs.json to write.")
def evaluate_reference(eval_set, data_dir, output):
    """Write text-davinci-003's outputs for a named eval set (from AlpacaEval's reference file): the baseline."""
    from pathlib import Path

    from alpaca_ds.evaluate.answers import write_outputs
    from alpaca_ds.evaluate.eval_sets import reference_outputs

    records = reference_outputs(eval_set, data_dir)
    write_outputs(Path(output), records)
    click.echo(f"wrote {output}: {len(records)} outputs by {records[0].get('generator')}")


@evaluate_group.command("judge")
@CONFIG
@SET
@click.option("--a", "a_path", help="Outputs 1, the baseline (model_outputs.json shape).")
@click.option("--b", "b_path", help="Outputs 2, the model judged; the win rate is B's over A.")
@click.option("--out-dir", help="Folder for annotations, the call ledger and the report.")
@click.option(
    "--cancel-batches",
    is_flag=True,
    help="api.transport batch: cancel the batches a stopped run left running, keep what they answered, and stop.",
)
def evaluate_judge(config_path, overrides, a_path, b_path, out_dir, cancel_batches):
    """Ask a judge model which answer is better, in both orders, within a hard budget.

    Rerunning the same command pays only for calls not yet answered. Exit status: 0 all pairs judged, 3 the
    budget stopped it, 4 some calls failed all retries, 5 the API refused the key or model, 130 interrupted.
    """
    from alpaca_ds.evaluate import judge
    from alpaca_ds.evaluate.config import JudgeConfig

    cfg = load_config(JudgeConfig, config_path, (*flags(a=a_path, b=b_path, out_dir=out_dir), *overrides))
    finish(judge.run(cfg, cancel_batches=cancel_batches))


@evaluate_group.command("winrate")
@click.argument("annotations", type=click.Path(dir_okay=False), required=False)
@CONFIG
@SET
@click.option("--out", "out_dir", help="Folder for winrate.md and winrate.json [default: beside ANNOTATIONS].")
@click.option("--difficulty", help="CSV of instruction_difficulty (by index or instruction) for the LC win rate.")
@click.option("--gamed", help="CSV of gamed-baseline rows (AlpacaEval's df_gamed.csv shape) for the LC win rate.")
def evaluate_winrate(annotations, config_path, overrides, out_dir, difficulty, gamed):
    """Raw and length-controlled win rates of output_2 over output_1 from AlpacaEval-format annotations (JSON or
    JSONL), as AlpacaEval 1.0 and 2.0 compute them."""
    from alpaca_ds.evaluate import winrate
    from alpaca_ds.evaluate.config import WinrateConfig

    extra = flags(annotations=annotations, out=out_dir, difficulty=difficulty, gamed=gamed)
    result = winrate.run(load_config(WinrateConfig, config_path, (*extra, *overrides)))
    click.echo(winrate.markdown(result.report), nl=False)
    if result.warning:
        click.echo(f"warning: {result.warning}", err=True)
    click.echo(result.summary(), err=True)


@evaluate_group.command("human")
@click.option("--a", "a_path", required=True, help="Outputs 1 (model_outputs.json shape).")
@click.option("--b", "b_path", required=True, help="Outputs 2; the win rate is B's over A.")
@click.option(
    "--out",
    "out_path",
    default="eval/human/judgments.jsonl",
    show_default=True,
    help="JSONL the judgments are appended to; rerunning with it continues.",
)
@click.option("--port", default=8088, show_default=True, help="TCP port; 0 picks a free one (printed).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--seed", default=0, show_default=True, help="Seed of which answer is shown as A, per item.")
@click.option("--rater", default="rater", show_default=True, help="Name recorded with each judgment.")
@click.option("--limit", type=int, help="Only the first N pairs.")
def evaluate_human(a_path, b_path, out_path, port, host, seed, rater, limit):
    """Serve a local page for blind A/B judgments by a person; each judgment is saved as it is made."""
    from alpaca_ds.evaluate import human

    session = human.HumanSession(a_path, b_path, out_path, seed=seed, rater=rater, limit=limit)
    human.serve(session, host=host, port=port, announce=lambda m: click.echo(m))
    click.echo(human.summary(session))


@click.command("chat")
@CONFIG
@SET
@click.option("--model", help="Exported model folder (RUN/final).")
def chat_command(config_path, overrides, model):
    """Chat with a fine-tuned model in the terminal; answers stream as they are generated."""
    from alpaca_ds.evaluate import chat
    from alpaca_ds.evaluate.config import ServeConfig

    cfg = load_config(ServeConfig, config_path, (*flags(model=model), *overrides))
    chat.run(cfg)


@click.command("serve")
@CONFIG
@SET
@click.option("--model", help="Exported model folder (RUN/final).")
@click.option("--port", type=int, help="TCP port [default: 8000]; 0 picks a free one (printed).")
@click.option("--host", help="Address to bind [default: 127.0.0.1].")
def serve_command(config_path, overrides, model, port, host):
    """Serve a fine-tuned model as an OpenAI-compatible API (/v1/completions, /v1/chat/completions, streaming)."""
    from alpaca_ds.evaluate import serve
    from alpaca_ds.evaluate.config import ServeConfig

    cfg = load_config(ServeConfig, config_path, (*flags(model=model, port=port, host=host), *overrides))
    serve.serve(cfg, announce=lambda m: click.echo(m))


@click.group("demo", invoke_without_command=True)
@CONFIG
@SET
@click.option("--model", help="Exported model folder (RUN/final), or an OpenAI-compatible endpoint URL ending in /v1.")
@click.option("--feedback", help="JSONL the answers and ratings are appended to [default: demo/feedback.jsonl].")
@click.option("--port", type=int, help="TCP port [default: 7860]; 0 picks a free one (printed).")
@click.option("--host", help="Address to bind [default: 127.0.0.1].")
@click.pass_context
def demo_group(ctx, config_path, overrides, model, feedback, port, host):
    """A web page to talk to a model and rate its answers (thumbs up/down, comments) into a feedback file.

    `alpaca-ds demo summary FILE` summarises the feedback.
    """
    if ctx.invoked_subcommand is not None:
        return
    from alpaca_ds.evaluate import demo
    from alpaca_ds.evaluate.config import DemoConfig

    extra = flags(model=model, feedback=feedback, port=port, host=host)
    demo.serve(load_config(DemoConfig, config_path, (*extra, *overrides)), announce=lambda m: click.echo(m))


@demo_group.command("summary")
@click.argument("feedback_file", type=click.Path(dir_okay=False))
@click.option("--worst", default=10, show_default=True, help="How many thumbs-down answers to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo_summary(feedback_file, worst, as_json):
    """Counts, share of thumbs up and the thumbs-down answers of a demo's feedback file."""
    from alpaca_ds.evaluate import feedback

    s = feedback.summarize(feedback_file, worst)
    click.echo(json.dumps(s, indent=2, ensure_ascii=False) if as_json else feedback.markdown(s), nl=as_json)


COMMANDS = (evaluate_group, chat_command, serve_command, demo_group)
