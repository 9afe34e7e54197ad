"""Win rates from pairwise annotations, with AlpacaEval's arithmetic.

    alpaca-ds evaluate winrate eval/judge/alpaca-7b-vs-text_davinci_003/annotations.json
    alpaca-ds evaluate winrate eval/human/judgments.jsonl --out eval/human

An annotation is {"instruction", "output_1", "output_2", "preference", ...} (a JSON list or JSONL, extra keys
kept out of the way); `preference` is 1 (output_1 better), 2 (output_2 better), 0 or 1.5 (a tie), or a float in
[1, 2] (a weighted judge's probability-like preference). The win rate is output_2's over output_1, as AlpacaEval
computes it (metrics/helpers.py: AbsoluteScoringRule and ZeroOneScoringRule):

  * 0 is read as 1.5; values outside [1, 2], null and NaN are dropped (counted as `n_dropped`);
  * win_rate = 100 x mean(preference - 1), standard_error = 100 x its standard error of the mean (ddof 1) --
    for discrete preferences that is (wins + 1/2 ties) / n;
  * discrete_win_rate: each preference rounded to 1 or 2 (1.5 stays a tie), then (wins + 1/2 ties) / n;
  * n_wins / n_wins_base count preferences above / below 1.5, n_draws those equal to 1.5 (or 0).

Reported overall and per `dataset` (AlpacaEval's subsets: helpful_base, koala, oasst, selfinstruct, vicuna),
with AlpacaEval 2.0's length-controlled win rate beside the raw one (lc_winrate.py; `--difficulty CSV` and
`--gamed CSV` are its optional inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import atomic_write_bytes, atomic_write_json
from alpaca_ds.common.jsonfile import Bad, read_objects
from alpaca_ds.evaluate import lc_winrate
from alpaca_ds.evaluate.config import WinrateConfig
from alpaca_ds.evaluate.lc_winrate import as_number


def read_annotations(path: str | Path) -> list[dict]:
    """Annotations from a JSON list or a JSONL file (a torn last line of a JSONL being written is skipped)."""
    where, rows = [], []
    for item in read_objects(path, "annotations"):
        if isinstance(item, Bad):
            if item.torn:  # the last line of a JSONL still being written, cut short
                continue
            raise item.error()
        where.append(item[0])
        rows.append(item[1])
    for w, row in zip(where, rows):
        if not isinstance(row, dict):
            raise UserError(f"{w}: expected an annotation object, got {type(row).__name__}")
        if "preference" not in row:
            raise UserError(
                f"{w}: no 'preference' key (expected AlpacaEval's annotation shape: instruction, "
                "output_1, output_2, preference)"
            )
    if not rows:
        raise UserError(f"{path}: no annotations")
    return rows


def _describe(values: list[float | None]) -> dict:
    """AlpacaEval's describe_head2head on already-preprocessed preferences (0 -> 1.5 done by the caller)."""
    n_draws = sum(1 for v in values if v == 1.5)
    kept = [v - 1 for v in values if v is not None and 1 <= v <= 2]
    n = len(kept)
    mean = sum(kept) / n if n else float("nan")
    if n > 1:
        var = sum((x - mean) ** 2 for x in kept) / (n - 1)
        sem = math.sqrt(var / n)
    else:
        sem = float("nan")
    return {
        "win_rate": mean * 100,
        "standard_error": sem * 100,
        "n_wins": sum(1 for x in kept if x > 0.5),
        "n_wins_base": sum(1 for x in kept if x < 0.5),
        "n_draws": n_draws,
        "n_total": n,
    }


def head2head(preferences: list) -> dict:
    """Win rate of output_2 over output_1 (percent), its standard error, counts, and the discrete win rate."""
    raw = [as_number(p) for p in preferences]
    absolute = [1.5 if v == 0 else v for v in raw]
    # ZeroOneScoringRule: a tie stays a tie, anything else is rounded to the nearer of 1 and 2
    # (half-to-even rounding, as pandas; a value that rounds to 0 becomes a tie there, as it does in AlpacaEval)
    discrete = [None if v is None else 1.5 if v == 1.5 or round(v) == 0 else float(round(v)) for v in absolute]
    out = _describe(absolute)
    out["discrete_win_rate"] = _describe(discrete)["win_rate"]
    out["n_dropped"] = len(preferences) - out["n_total"]
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def report(annotations: list[dict], source: str = "", length_controlled: dict | None = None) -> dict:
    by: dict[str, list] = {}
    for a in annotations:
        by.setdefault(str(a.get("dataset") or "(none)"), []).append(a.get("preference"))
    g1 = sorted({str(a["generator_1"]) for a in annotations if a.get("generator_1") is not None})
    g2 = sorted({str(a["generator_2"]) for a in annotations if a.get("generator_2") is not None})
    rep = {
        "source": source,
        "generator_1": ", ".join(g1) or "output_1",
        "generator_2": ", ".join(g2) or "output_2",
        "overall": head2head([a.get("preference") for a in annotations]),
        "by_dataset": {name: head2head(prefs) for name, prefs in sorted(by.items())},
    }
    if length_controlled is not None:
        rep["length_controlled"] = length_controlled
    return rep


def _fmt(x, digits=2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown(rep: dict) -> str:
    lines = [f"# Win rate of {rep['generator_2']} over {rep['generator_1']}", ""]
    if rep["source"]:
        lines += [f"Annotations: `{rep['source']}`", ""]
    o = rep["overall"]
    lines += [
        f"**{_fmt(o['win_rate'])}% ± {_fmt(o['standard_error'])}** (standard error) over {o['n_total']} "
        f"pairs: {o['n_wins']} wins, {o['n_wins_base']} losses, {o['n_draws']} ties"
        + (f"; {o['n_dropped']} without a preference dropped" if o["n_dropped"] else "")
        + ".",
        "",
        "| dataset | n | win rate % | ± s.e. | discrete win rate % | wins | losses | ties |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [("**all**", o)] + list(rep["by_dataset"].items())
    for name, r in rows:
        lines.append(
            f"| {name} | {r['n_total']} | {_fmt(r['win_rate'])} | {_fmt(r['standard_error'])} | "
            f"{_fmt(r['discrete_win_rate'])} | {r['n_wins']} | {r['n_wins_base']} | {r['n_draws']} |"
        )
    lines += [
        "",
        "Win rate = 100 × mean(preference − 1) as in AlpacaEval (discrete preferences: "
        "(wins + ½ ties) / n); "
        "discrete win rate rounds each preference to a win, loss or tie first.",
    ]
    if "judge" in rep:
        lines += _judge_markdown(rep["judge"])
    if "length_controlled" in rep:
        lines += _lc_markdown(o, rep["length_controlled"])
    return "\n".join(lines) + "\n"


def _judge_markdown(judge: dict) -> list[str]:
    """How `evaluate judge` read its replies: a weighted judge says how many calls fell back to the verdict."""
    calls = judge["calls_by_source"]
    if judge["mode"] != "weighted":
        return ["", f"Judge: discrete verdicts ({judge['no_verdict']} replies named neither output)."]
    fell_back = calls.get("verdict", 0)
    line = (
        f"Judge: weighted, preferences from log-probabilities for {calls.get('logprobs', 0)} of "
        f"{sum(calls.values())} calls"
    )
    if fell_back:
        line += (
            f"; **{fell_back} fell back to the discrete verdict** (the API returned no log-probabilities, or "
            f"neither m nor M was among the top 5), {judge['no_verdict']} of them without one"
        )
    return ["", line + "."]


def _lc_markdown(raw: dict, lc: dict) -> list[str]:
    lines = ["", "## Length-controlled win rate (AlpacaEval 2.0)", ""]
    if "skipped" in lc:
        return lines + [f"Not computed: {lc['skipped']}."]
    lines += [
        "| | win rate % | ± s.e. | n |",
        "|---|---:|---:|---:|",
        f"| raw | {_fmt(raw['win_rate'])} | {_fmt(raw['standard_error'])} | {raw['n_total']} |",
        f"| length-controlled | {_fmt(lc['win_rate'])} | {_fmt(lc['standard_error'])} | {lc['n_total']} |",
        "",
    ]
    if lc["C"] is None:
        lines.append("output_1 and output_2 come from the same generator: 50 by construction.")
    else:
        weights = ", ".join(f"{k} {v:+.3f}" for k, v in lc["coefficients"].items())
        lines.append(
            f"GLM fitted on {lc['n_fit']} annotations"
            + (f" and {lc['n_gamed']} gamed-baseline rows" if lc["n_gamed"] else "")
            + f" (C = {lc['C']:.4g}): {weights}."
        )
    if "difficulty" not in lc["terms"]:
        lines.append(
            "Without an instruction-difficulty file the model has only the length term and ψ, so every "
            "prediction is σ(ψ) and the standard error (AlpacaEval's: of the mean of the per-instruction "
            "predictions) is 0."
        )
    if lc["warning"]:
        lines += ["", f"**Warning**: {lc['warning']}"]
    return lines


def write_report(rep: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "winrate.md", out_dir / "winrate.json"
    atomic_write_bytes(md, markdown(rep).encode("utf-8"))
    atomic_write_json(js, rep)
    return md, js


def with_length_control(annotations: list[dict], source: str = "", difficulty=None, gamed=None) -> dict:
    """`report` with the length-controlled win rate beside the raw one (lc_winrate.py)."""
    raw = head2head([a.get("preference") for a in annotations])["win_rate"]
    return report(annotations, source, lc_winrate.length_controlled(annotations, raw, difficulty, gamed))


@dataclass(frozen=True)
class WinrateResult:
    report: dict  # winrate.json's content
    markdown_path: Path
    json_path: Path
    exit_code: int = 0

    @property
    def warning(self) -> str | None:
        """The length-controlled win rate's caveat, if it has one."""
        return self.report["length_controlled"].get("warning")

    def summary(self) -> str:
        return f"wrote {self.markdown_path} and {self.json_path}"


def run(cfg: WinrateConfig) -> WinrateResult:
    """`alpaca-ds evaluate winrate PATH`: read, compute raw and length-controlled win rates, write winrate.md +
    winrate.json (beside PATH by default)."""
    path = Path(cfg.annotations)
    annotations = read_annotations(path)
    difficulty = lc_winrate.read_difficulty(cfg.difficulty, annotations) if cfg.difficulty else None
    gamed = lc_winrate.read_gamed(cfg.gamed, difficulty is not None, cfg.gamed_weight) if cfg.gamed else None
    rep = with_length_control(annotations, str(path), difficulty, gamed)
    return WinrateResult(rep, *write_report(rep, Path(cfg.out) if cfg.out else path.parent))
