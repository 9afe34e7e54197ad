"""Length-controlled win rate: AlpacaEval 2.0's GLM (alpaca_eval's metrics/glm_winrate.py), for any annotations.

    alpaca-ds evaluate winrate annotations.json [--difficulty instruction_difficulty.csv] [--gamed df_gamed.csv]

A judge prefers longer answers; the length-controlled (LC) win rate asks what it would have preferred had both
answers been as long. Per annotation i (Δlen_i = len(output_1) − len(output_2) in characters):

    logit P(output_2 wins) = θ·tanh(Δlen_i / std(Δlen)) + φ·difficulty_i + ψ

fitted to the soft labels preference − 1 (0, a tie, counts as 1.5; annotations without a preference in [1, 2]
stay out of the fit but are predicted), each annotation as two weighted rows
(label 1 with weight p, label 0 with weight 1 − p), by L1-penalised logistic regression without intercept
(liblinear), C chosen among 10 values by 5-fold cross-validation with both rows of an annotation in one fold.
Then LC = 100 · mean_i σ(ψ + φ·difficulty_i): the prediction at Δlen = 0. Its standard error is AlpacaEval's:
that of the mean of those predictions (ddof 1), which speaks of how difficulty spreads them, not of the
uncertainty of ψ; without difficulty every prediction is σ(ψ) and it is 0.

Optional inputs, AlpacaEval's own files fit both (its df_gamed.csv serves as either):
  * difficulty CSV: `instruction_difficulty` with `index` (the annotation's 0-based row) or `instruction`; the first
    row of each key counts. Without it the model has only the length term and ψ.
  * gamed CSV: annotations of "gamed" baselines against the same baseline, rows that pull θ and φ towards the
    values a judge shows when only length changes: `preference` (P(the gamed output wins), 0..1), `std_delta_len`
    (standardised Δlen), `instruction_difficulty` (when difficulty is used), `model` (optional). They enter with
    indicator 0 for ψ and total weight λ = gamed_weight (0.2) shared evenly among the gamed models.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from alpaca_ds.common.errors import UserError


def as_number(x) -> float | None:
    """An annotation's preference as a number; None for a missing, boolean, non-numeric or NaN value."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


N_SPLITS = 5  # AlpacaEval: GLM_INFO[...]["kwargs"]["n_splits"]
RANDOM_STATE = 123  # AlpacaEval's liblinear seed


def _read_csv(path: str | Path, required: list[str], what: str) -> list[dict]:
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read the {what} CSV: {e}") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise UserError(
            f"{path}: the {what} CSV has no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(columns) or 'none'})"
        )
    return rows


def _float(path, lineno: int, column: str, value, blank_ok: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if math.isnan(x) and not (blank_ok and (value is None or str(value).strip() in ("", "nan", "NaN"))):
        raise UserError(f"{path}:{lineno}: column {column!r} holds {value!r}, not a number")
    return x


def read_difficulty(path: str | Path, annotations: list[dict]) -> np.ndarray:
    """Each annotation's instruction difficulty, keyed by `index` (its row) or by `instruction`."""
    rows = _read_csv(path, ["instruction_difficulty"], "difficulty")
    key = "index" if rows and "index" in rows[0] else "instruction"
    if rows and key not in rows[0]:
        raise UserError(
            f"{path}: the difficulty CSV needs an 'index' (the annotation's row, from 0) or an "
            "'instruction' column to say which annotation each difficulty belongs to"
        )
    found: dict[str, float] = {}
    for lineno, row in enumerate(rows, start=2):
        k = str(int(_float(path, lineno, "index", row["index"]))) if key == "index" else row["instruction"]
        found.setdefault(k, _float(path, lineno, "instruction_difficulty", row["instruction_difficulty"]))
    out = []
    for i, a in enumerate(annotations):
        k = str(i) if key == "index" else str(a.get("instruction"))
        if k not in found:
            raise UserError(
                f"{path}: no difficulty for annotation {i} ({key} {k[:80]!r}); the file must cover every annotation"
            )
        out.append(found[k])
    return np.array(out)


def read_gamed(path: str | Path, with_difficulty: bool, weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of gamed baselines: features (tanh of Δlen, [difficulty], indicator 0), soft labels, weights."""
    required = ["preference", "std_delta_len"] + (["instruction_difficulty"] if with_difficulty else [])
    rows = _read_csv(path, required, "gamed-baseline")
    features, labels, models = [], [], []
    for lineno, row in enumerate(rows, start=2):
        p = _float(path, lineno, "preference", row["preference"], blank_ok=True)
        if math.isnan(p):  # AlpacaEval fits only rows with a preference
            continue
        if not 0 <= p <= 1:
            raise UserError(
                f"{path}:{lineno}: preference {p} is outside 0..1 (AlpacaEval's df_gamed.csv scale: "
                "the probability that the gamed output wins)"
            )
        x = [math.tanh(_float(path, lineno, "std_delta_len", row["std_delta_len"]))]
        if with_difficulty:
            x.append(_float(path, lineno, "instruction_difficulty", row["instruction_difficulty"]))
        features.append(x + [0.0])
        labels.append(p)
        models.append(row.get("model"))
    if not labels:
        raise UserError(f"{path}: no gamed-baseline row with a preference")
    # AlpacaEval gives each row λ/2 "because there are two gamed baselines": λ shared by the models
    w = weight / len(set(models))
    return np.array(features), np.array(labels), np.full(len(labels), w)


def is_extreme_change(raw: float, lc: float, abs_diff: float = 10, rel_diff: float = 4) -> bool:
    """AlpacaEval's get_is_extreme_changes: LC below min(raw − raw/4, raw − 10) or above
    max(raw + (100 − raw)/4, raw + 10)."""
    return lc < min(raw - raw / rel_diff, raw - abs_diff) or lc > max(raw + (100 - raw) / rel_diff, raw + abs_diff)


def _soft_log_loss(y_true, y_pred, true_prob, true_sample_weight):
    """Cross-validation score: log loss against the soft label (y_true only says which of the two rows this is)."""
    p = np.where(y_true == 1, true_prob, 1 - true_prob)
    q = np.clip(y_pred, 1e-15, 1 - 1e-15)
    return -np.mean((p * np.log(q) + (1 - p) * np.log(1 - q)) * true_sample_weight)


@contextmanager
def _liblinear_quiet():
    """liblinear prints "WARNING: class label 1 specified in weight is not found" straight to file descriptor 2
    for every fold in which one side of the soft labels weighs nothing (a judge that always prefers the same
    output): harmless for the fit, and a flood on the console, so fd 2 goes to /dev/null while it fits."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def fit(features: np.ndarray, labels: np.ndarray, weights: np.ndarray):
    """L1 logistic regression without intercept on soft labels, C by grouped 5-fold cross-validation."""
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    n = len(labels)
    x = np.vstack([features, features])
    y = np.r_[np.ones(n), np.zeros(n)]
    prob = np.r_[labels, 1 - labels]
    w = np.r_[weights, weights]
    groups = np.r_[np.arange(n), np.arange(n)]  # both rows of an annotation land in the same fold
    with sklearn.config_context(enable_metadata_routing=True):  # routes the soft labels to the scorer
        scorer = make_scorer(_soft_log_loss, response_method="predict_proba", greater_is_better=False)
        model = LogisticRegressionCV(
            Cs=10,
            l1_ratios=(1,),
            solver="liblinear",
            fit_intercept=False,
            cv=GroupKFold(n_splits=N_SPLITS),
            random_state=RANDOM_STATE,
            scoring=scorer.set_score_request(true_prob=True, true_sample_weight=True),
            use_legacy_attributes=False,
        )
        model.set_fit_request(sample_weight=True)
        with _liblinear_quiet():
            model.fit(x, y, sample_weight=prob * w, groups=groups, true_prob=prob, true_sample_weight=w)
    return model


def _lengths(annotations: list[dict]) -> np.ndarray | str:
    """Δlen per annotation, or why it cannot be had."""
    out = []
    for i, a in enumerate(annotations):
        o1, o2 = a.get("output_1"), a.get("output_2")
        if not (isinstance(o1, str) and isinstance(o2, str)):
            return f"annotation {i} has no output_1 and output_2 text to measure"
        out.append(len(o1) - len(o2))
    return np.array(out, dtype=float)


def length_controlled(
    annotations: list[dict],
    raw_win_rate: float | None,
    difficulty: np.ndarray | None = None,
    gamed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict:
    """The LC win rate of output_2 over output_1 and what went into it; {"skipped": why} when it cannot be had."""
    terms = ["length", "ψ"] + (["difficulty"] if difficulty is not None else [])
    g1 = {a.get("generator_1") for a in annotations}
    g2 = {a.get("generator_2") for a in annotations}
    if len(g2) > 1:
        return {"skipped": f"the annotations judge {len(g2)} generator_2 models; the GLM fits one model at a time"}
    delta = _lengths(annotations)
    if isinstance(delta, str):
        return {"skipped": delta}
    n = len(annotations)
    if len(g1) == 1 and g1 == g2 and None not in g1:  # a baseline against itself: 50 by construction
        predicted = np.full(n, 0.5)
        coefficients, c = dict.fromkeys(terms, 0.0), None
        n_fit = n_gamed = 0
    else:
        std = delta.std(ddof=1) if n > 1 else 0.0
        length = np.tanh(delta / std) if std > 0 else np.zeros(n)  # identical lengths: no length effect to fit
        columns = [length] + ([difficulty] if difficulty is not None else []) + [np.ones(n)]
        features = np.column_stack(columns)
        prefs = np.array([_preference(a.get("preference")) for a in annotations])
        keep = ~np.isnan(prefs)
        if keep.sum() < N_SPLITS:
            return {
                "skipped": f"{int(keep.sum())} annotations with a preference; the GLM's {N_SPLITS}-fold "
                f"cross-validation needs at least {N_SPLITS}"
            }
        x, p, w = features[keep], prefs[keep], np.ones(int(keep.sum()))
        n_fit, n_gamed = len(p), 0
        if gamed is not None:  # AlpacaEval puts the gamed rows first (the folds depend on the order)
            n_gamed = len(gamed[1])
            x, p, w = np.vstack([gamed[0], x]), np.r_[gamed[1], p], np.r_[gamed[2], w]
        model = fit(x, p, w)
        test = features.copy()
        test[:, 0] = 0.0  # as if both answers were as long
        predicted = model.predict_proba(test)[:, 1]
        coefficients = dict(zip(["length"] + terms[2:] + ["ψ"], map(float, model.coef_[0])))
        c = float(model.C_)
    lc = float(predicted.mean() * 100)
    se = float(predicted.std(ddof=1) / math.sqrt(n) * 100) if n > 1 else None
    warning = None
    if raw_win_rate is not None and is_extreme_change(raw_win_rate, lc):
        warning = (
            f"Length controlled win rate is very different from the raw one: {lc:.1f}% vs "
            f"{raw_win_rate:.1f}%. This might be a sign of failure of the GLM."
        )
    return {
        "win_rate": lc,
        "standard_error": se,
        "n_total": n,
        "n_fit": n_fit,
        "n_gamed": n_gamed,
        "terms": terms + (["gamed baselines"] if n_gamed else []),
        "coefficients": coefficients,
        "C": c,
        "warning": warning,
    }


def _preference(value) -> float:
    """A preference as a probability that output_2 wins (0 is a tie); NaN for none or one outside [1, 2]."""
    v = as_number(value)
    v = 1.5 if v == 0 else v
    return v - 1 if v is not None and 1 <= v <= 2 else math.nan
