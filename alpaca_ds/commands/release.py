"""`alpaca-ds release ...`: weight diffs and their recovery, cards, the release folder (alpaca_ds/release)."""

from __future__ import annotations

import click

EVALS = click.option(
    "--eval",
    "evals",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="winrate.json of a judge run on this model's answers (repeatable).",
)


@click.group("release")
def release_group():
    """Release assets: weight diffs (and their recovery), cards, a release folder."""


@release_group.command("diff")
@click.option("--base", required=True, type=click.Path(file_okay=False, exists=True), help="The base model folder.")
@click.option("--tuned", required=True, type=click.Path(file_okay=False, exists=True), help="The fine-tuned model.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where to write the diff.")
def release_diff(base, tuned, out):
    """Write tuned − base (safetensors, with checksums) for models whose weights cannot be redistributed."""
    from pathlib import Path

    from alpaca_ds.release.weights import make_diff

    click.echo(make_diff(Path(base), Path(tuned), out).summary())


@release_group.command("recover")
@click.option("--base", required=True, type=click.Path(file_okay=False, exists=True), help="The base model folder.")
@click.option("--diff", "diff_dir", required=True, type=click.Path(file_okay=False, exists=True), help="The diff.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where to write the tuned model.")
def release_recover(base, diff_dir, out):
    """Rebuild the tuned model from base + diff; refused unless every tensor's checksum matches."""
    from pathlib import Path

    from alpaca_ds.release.weights import recover

    click.echo(recover(Path(base), Path(diff_dir), out).summary())


@release_group.command("card")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@EVALS
@click.option("--out", type=click.Path(file_okay=False), help="Where to write the cards [default: RUN_DIR].")
def release_card(run_dir, evals, out):
    """Write MODEL_CARD.md and DATA_CARD.md from a training run's provenance chain."""
    from pathlib import Path

    from alpaca_ds.release.cards import write_cards

    click.echo(write_cards(Path(run_dir), out or run_dir, [Path(e) for e in evals]).summary())


@release_group.command("pack")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The release folder to create.")
@click.option("--base", type=click.Path(file_okay=False, exists=True), help="Base model: publish a weight diff.")
@click.option("--full-weights", is_flag=True, help="Publish the weights themselves (when the base licence allows).")
@EVALS
def release_pack(run_dir, out, base, full_weights, evals):
    """Gather weights (diff or full; a LoRA run's adapter always), tokenizer, cards, data and configs into a folder
    with SHA256SUMS. A LoRA run's adapter needs neither --base nor --full-weights."""
    from pathlib import Path

    from alpaca_ds.release.cards import pack

    folder = pack(Path(run_dir), Path(out), Path(base) if base else None, full_weights, [Path(e) for e in evals])
    click.echo(f"packed {folder} (SHA256SUMS lists every file)")
