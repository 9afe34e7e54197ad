"""MODEL_CARD.md and DATA_CARD.md from a training run's provenance chain, and a release folder.

    alpaca-ds release card runs/alpaca-7b --eval eval/judge/alpaca-7b-vs-text_davinci_003/winrate.json
    alpaca-ds release pack runs/alpaca-7b --out release/alpaca-7b --base llama-7b --eval .../winrate.json

The chain: the run's provenance.json names the dataset manifest (by sha256), the manifest names the generation
run (teacher, prompt-template and seed-set hashes, filter counts, cost), and an evaluation's winrate.json names
the weights it judged (by sha256). Every number on the cards is read from those files; a link whose hash no longer
matches is reported on the card, not hidden.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import yaml

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import atomic_write_bytes, sha256_file
from alpaca_ds.common.provenance import PROVENANCE
from alpaca_ds.release.result import CardsResult
from alpaca_ds.train.metrics import read_metrics

ALPACA_DATA_SHA256 = "2eddafc6b977608d778aaab8dfc7e50e547b3af9826dfb9e909d9fc362e4a419"
LIMITATIONS = """\
- **Hallucination.** Like Alpaca and its teacher, the model states false things fluently; do not rely on its facts.
- **Toxicity and bias.** Neither the base model nor the instruction data was filtered for harmful or biased
  content beyond the generator's keyword filters; the model can produce offensive or stereotyped text.
- **The teacher's terms of use.** Data generated with a commercial API is subject to that provider's terms (Alpaca's
  data, made with text-davinci-003, comes with OpenAI's terms, which restrict using it to build competing models).
- **Research use.** Alpaca was released for research only; a model like it is not a product and has no safety
  tuning beyond what its data gives it."""


def read_chain(run_dir: Path, evals: list[Path] = ()) -> dict:
    """Every link of a run's chain, each checked against the hash the next stage recorded."""
    run_dir = Path(run_dir)
    prov_path = run_dir / PROVENANCE
    if not prov_path.is_file():
        raise UserError(f"{run_dir}: no {PROVENANCE}; cards need a training run that finished (alpaca-ds train)")
    prov = json.loads(prov_path.read_text())
    config = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    metrics = read_metrics(run_dir / "metrics.jsonl")
    manifest_path = Path(prov["dataset"]["path"]) / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path}: the run's dataset is gone; cards need it (rebuild it at that path)")
    manifest = json.loads(manifest_path.read_text())
    checks = {
        "dataset manifest unchanged since training": sha256_file(manifest_path) == prov["dataset"]["manifest_sha256"]
    }
    generation = manifest.get("generation")
    if generation:
        out = Path(generation["out_dir"])
        checks["generation files unchanged since the build"] = all(
            (out / n).is_file() and sha256_file(out / n) == h for n, h in generation["files_sha256"].items()
        )
    evaluations = []
    for path in evals:
        report = json.loads(Path(path).read_text())
        sides = report.get("provenance") or {}
        judged = [side for side, p in sides.items() if p and p.get("model_sha256") == prov["final_weights_sha256"]]
        if not judged:
            raise UserError(
                f"{path}: this evaluation did not judge this run's weights (no side has model_sha256 "
                f"{(prov['final_weights_sha256'] or 'none')[:12]}); pass the winrate.json of a judge run on "
                "answers `alpaca-ds evaluate answer` wrote from this run's final/ folder"
            )
        evaluations.append({"path": str(path), "side": judged[0], "report": report})
    return {
        "run_dir": run_dir,
        "provenance": prov,
        "config": config,
        "metrics": metrics,
        "manifest": manifest,
        "generation": generation,
        "evaluations": evaluations,
        "checks": checks,
    }


def model_card(chain: dict) -> str:
    prov, cfg, m = chain["provenance"], chain["config"], chain["manifest"]
    train_rows = [r for r in chain["metrics"] if "loss" in r]
    val = [r["val_loss"] for r in chain["metrics"] if "val_loss" in r]
    base = cfg["model"]["name_or_path"] or f"random init ({json.dumps(cfg['model']['init_config'])})"
    b, o = cfg["batch"], cfg["optim"]
    lora = prov.get("lora")
    lines = [
        f"# Model card: {chain['run_dir'].name}",
        "",
        f"{'A LoRA adapter for' if lora else 'Fine-tuned from'} **{base}**, trained on "
        f"{m['counts']['examples']:,} instruction-following examples with alpaca-ds (DeepSpeed ZeRO-3, "
        "Alpaca's recipe).",
        "",
        "## Weights",
        "",
    ]
    if lora:
        lines += _adapter_lines(lora, base)
    if prov["final_weights_sha256"]:
        lines.append(
            f"- {'merged ' if lora else ''}final weights sha256 (safetensors files): `{prov['final_weights_sha256']}`"
        )
    lines += [
        f"- export check: reloaded logits within {prov['export_logits_max_diff']:.3g} of the training engine's",
        "",
        "## Training data",
        "",
        f"- dataset: `{prov['dataset']['path']}` (manifest sha256 `{prov['dataset']['manifest_sha256']}`)",
        f"- {m['counts']['examples']:,} examples from {m['counts']['records']:,} records of `{m['source']['input']}` "
        f"(sha256 `{m['source']['sha256']}`); see DATA_CARD.md",
    ]
    if chain["generation"]:
        g = chain["generation"]
        lines.append(
            f"- generated by teacher **{g['teacher_model']}** ({g['accepted']:,} instructions, ${g['spent_usd']:.4f})"
        )
    lines += [
        "",
        "## Training procedure",
        "",
        f"- engine: DeepSpeed, `{cfg['ds_config']}`, {prov['world_size']} × {prov['accelerator']}"
        + (f" ({prov['device']})" if prov.get("device") else ""),
        f"- global batch {b['global_batch_size']} (micro-batch {b['micro_batch_size']} per device), lr {o['lr']}, "
        f"{o['epochs']} epochs, cosine with {o['warmup_ratio']:.0%} warmup, weight decay {o['weight_decay']}, "
        f"AdamW {tuple(o['betas'])}, eps {o['eps']}, gradient clipping {o['grad_clip']}",
        f"- {prov['steps']} optimizer steps; {prov['seconds_this_launch']} s in the last launch"
        + (f" (resumed from step {prov['resumed_from_step']})" if prov.get("resumed_from_step") else ""),
        f"- batching: {cfg['data']['batching']}; max length {m['max_length']} tokens; "
        + (
            "prompt tokens trained on too (alpaca-lora's default)"
            if cfg["data"].get("train_on_prompt")
            else "prompt tokens masked from the loss"
        )
        + " (Alpaca's template)",
    ]
    if train_rows:
        lines.append(
            f"- training loss {train_rows[0]['loss']:.4f} at step {train_rows[0]['step']} → "
            f"{train_rows[-1]['loss']:.4f} at step {train_rows[-1]['step']}"
            + (f"; validation loss {val[-1]:.4f}" if val else "")
        )
    lines += ["", "## Evaluation", ""]
    if not chain["evaluations"]:
        lines.append("No evaluation was given (`--eval winrate.json`).")
    for e in chain["evaluations"]:
        o_ = e["report"]["overall"]
        ours = e["side"]
        rate = o_["win_rate"] if ours == "output_2" or o_["win_rate"] is None else 100 - o_["win_rate"]
        se = "n/a" if o_["standard_error"] is None else f"{o_['standard_error']:.2f}"
        lines.append(
            f"- win rate **{'n/a' if rate is None else f'{rate:.2f}'}% ± {se}** over {o_['n_total']} pairs against "
            f"`{e['report'].get('generator_1' if ours == 'output_2' else 'generator_2')}` "
            f"(`{e['path']}`)"
        )
    lines += [
        *_licences_and_limitations("## Licences", _model_licence(base, bool(lora)), _data_licence(chain)),
        "## Provenance checks",
        "",
    ]
    lines += [
        f"- {name}: {'yes' if ok else '**NO — the file changed after the stage that recorded it**'}"
        for name, ok in chain["checks"].items()
    ]
    return "\n".join(lines) + "\n"


def data_card(chain: dict) -> str:
    m, g = chain["manifest"], chain["generation"]
    c = m["counts"]
    lines = [
        f"# Data card: {Path(m['source']['input']).name}",
        "",
        "In the spirit of Alpaca's datasheet: what the data is, how it was made, and what it should be used for.",
        "",
        "## Composition",
        "",
        f"- {c['records']:,} records in Alpaca's format (`instruction`, `input`, `output`), file sha256 "
        f"`{m['source']['sha256']}`",
        f"- {c['examples']:,} tokenized examples: "
        + ", ".join(
            f"{name} {s['examples']:,} ({s['tokens']:,} tokens, {s['label_tokens']:,} trained on)"
            for name, s in m["splits"].items()
        ),
        f"- truncated at {m['max_length']} tokens: {c['truncated']:,}; dropped as too long: "
        f"{c['dropped_overlength']:,}; invalid records skipped: {c['invalid_skipped']:,}",
        "",
        "## Collection process",
        "",
    ]
    if g:
        rejected = ", ".join(f"{k} {v:,}" for k, v in g["rejected"].items()) or "none"
        lines += [
            f"- self-instruct generation with teacher **{g['teacher_model']}** ({g['api_mode']} API), "
            f"`alpaca-ds generate` run `{g['out_dir']}`",
            f"- prompt template sha256 `{g['prompt_template_sha256']}`; seed tasks "
            f"`{g['seed_tasks']}` sha256 `{g['seed_tasks_sha256']}`",
            f"- {g['accepted']:,} instructions accepted of a target of {g['target']:,}; rejected by filter: "
            f"{rejected} (ROUGE-L threshold {g['rouge_threshold']})",
            f"- {g['requests']['sent']:,} requests ({g['requests']['retries']:,} retries, "
            f"{g['requests']['failed']:,} failed); {g['prompt_tokens']:,} prompt + {g['completion_tokens']:,} "
            f"completion tokens; cost **${g['spent_usd']:.4f}**",
        ]
    else:
        lines.append(
            f"- not generated by alpaca-ds: the records come from `{m['source']['input']}` as they are"
            + (
                " (the public Stanford Alpaca data, generated with text-davinci-003)"
                if m["source"]["sha256"] == ALPACA_DATA_SHA256
                else ""
            )
        )
    tok = m["tokenizer"]
    lines += [
        "",
        "## Preprocessing",
        "",
        f"- Alpaca's prompt template ({m['template']['name']}); prompt tokens masked from the loss (-100)",
        f"- tokenizer `{tok['name_or_path']}` (sha256 `{tok['sha256']}`), added tokens "
        f"{tok['added_special_tokens'] or 'none'}",
        "",
        "## Uses",
        "",
        "Supervised fine-tuning of instruction-following research models, as Stanford Alpaca. Not for "
        "commercial use where the data licence or the teacher's terms forbid it.",
        *_licences_and_limitations("## Licence", _data_licence(chain)),
    ]
    return "\n".join(lines)


def write_cards(run_dir: Path, out: Path | str, evals: list[Path] = ()) -> CardsResult:
    chain, folder = read_chain(run_dir, evals), Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "MODEL_CARD.md", model_card(chain).encode())
    atomic_write_bytes(folder / "DATA_CARD.md", data_card(chain).encode())
    return CardsResult(str(out), chain)


def pack(run_dir: Path, out: Path, base: Path | None, full_weights: bool, evals: list[Path] = ()) -> Path:
    """A release folder: weights (a diff against `base`, or the full weights; a LoRA run's adapter, which holds no
    base weight, needs neither), tokenizer, cards, data, configs, and SHA256SUMS over all of it."""
    from alpaca_ds.release.weights import COPIED, make_diff

    adapter = Path(run_dir) / "adapter"  # alpaca_ds.train.lora.ADAPTER (release does not import train)
    final = Path(run_dir) / "final"
    if base is not None and full_weights:
        raise UserError("release pack: give --base BASE (publish a weight diff) or --full-weights, not both")
    if base is None and not full_weights and not adapter.is_dir():
        raise UserError(
            "release pack: give --base BASE (publish a weight diff) or --full-weights (only when the "
            "base model's licence allows redistributing its weights)"
        )
    if (base is not None or full_weights) and not final.is_dir():
        raise UserError(
            f"{final}: missing (a LoRA run with model.lora.merged_export false); pack its adapter alone "
            "(without --base or --full-weights)"
        )
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not empty; choose another --out")
    chain = read_chain(run_dir, evals)  # before anything is written: a broken chain fails here
    if adapter.is_dir():
        shutil.copytree(adapter, out / "adapter")
    if base is not None:
        make_diff(base, final, out / "weight-diff")
    elif full_weights:
        shutil.copytree(final, out / "model")
    tokenizer = final if final.is_dir() else adapter
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    for name in COPIED[2:]:  # the tokenizer files
        if (tokenizer / name).is_file():
            shutil.copy2(tokenizer / name, out / "tokenizer" / name)
    write_cards(run_dir, out, evals)
    data = Path(chain["manifest"]["source"]["path"])
    if sha256_file(data) != chain["manifest"]["source"]["sha256"]:
        raise UserError(f"{data}: differs from the file the dataset was built from; restore it to pack the data")
    (out / "data").mkdir()
    shutil.copy2(data, out / "data" / data.name)
    configs = out / "configs"
    configs.mkdir()
    for src in (
        Path(run_dir) / "config.resolved.yaml",
        Path(run_dir) / "ds_config.json",
        Path(run_dir) / PROVENANCE,
        Path(chain["provenance"]["dataset"]["path"]) / "manifest.json",
    ):
        shutil.copy2(src, configs / (f"dataset-{src.name}" if src.name == "manifest.json" else src.name))
    if chain["generation"]:
        shutil.copy2(Path(chain["generation"]["out_dir"]) / "run.json", configs / "generation-run.json")
    for e in chain["evaluations"]:
        shutil.copy2(e["path"], configs / f"eval-{Path(e['path']).parent.name}-winrate.json")
    sums = "".join(
        f"{sha256_file(p)}  {p.relative_to(out).as_posix()}\n" for p in sorted(out.rglob("*")) if p.is_file()
    )
    atomic_write_bytes(out / "SHA256SUMS", sums.encode())
    return out


def _adapter_lines(lora: dict, base: str) -> list[str]:
    trained = ", ".join(lora["target_modules"]) + (
        f"; trained in full: {', '.join(lora['modules_to_save'])}" if lora["modules_to_save"] else ""
    )
    hashes = lora["base_tensors_sha256"]
    if hashes is None:  # QLoRA: the base is quantized from model.name_or_path as it loads
        base_line = f"- the base it was trained on: {base}, quantized to 4-bit NF4 as it loaded"
    else:
        base_id = hashlib.sha256("".join(f"{n}\0{h}\n" for n, h in sorted(hashes.items())).encode()).hexdigest()
        base_line = (
            f"- the base it was trained on: {len(hashes)} tensors, combined sha256 `{base_id}` (each "
            f"tensor's in the run's provenance.json; {base})"
        )
    return [
        f"- LoRA rank {lora['r']}, alpha {lora['alpha']}, dropout {lora['dropout']} on {trained}"
        + (" (QLoRA: 4-bit NF4 base)" if lora["quantize"] != "none" else ""),
        f"- adapter sha256 (safetensors files): `{lora['adapter_sha256']}`; load it with "
        "`PeftModel.from_pretrained(base, ADAPTER_DIR)`, the base resized to the tokenizer's length with the new "
        "rows set to the mean of the old ones, as Alpaca adds [PAD]",
        base_line,
    ]


def _model_licence(base: str, adapter: bool = False) -> str:
    if adapter:
        return (
            f"- **Model**: the adapter holds no weight of {base}, only low-rank updates trained on it; using it "
            "needs the base, under the base's own licence."
        )
    if "llama" in base.lower():
        return (
            f"- **Model**: derived from {base}, under Meta's LLaMA licence, which does not allow redistributing "
            "its weights: publish a weight diff (`alpaca-ds release diff`), as Alpaca did."
        )
    return f"- **Model**: derived from {base}; its licence governs the weights."


def _data_licence(chain: dict) -> str:
    m = chain["manifest"]
    if m["source"]["sha256"] == ALPACA_DATA_SHA256:
        return (
            "- **Data**: the Stanford Alpaca data, CC BY-NC 4.0 (non-commercial), made with OpenAI's text-davinci-003."
        )
    if chain["generation"]:
        return (
            f"- **Data**: generated by {chain['generation']['teacher_model']}; its provider's terms of use apply to "
            "it, and any licence you give it must respect them."
        )
    return f"- **Data**: `{m['source']['input']}`, under whatever licence its authors gave it."


def _licences_and_limitations(heading: str, *licences: str) -> list[str]:
    """A card's licence section (under `heading`) and its known limitations, as card lines."""
    return ["", heading, "", *licences, "", "## Known limitations", "", LIMITATIONS, ""]
