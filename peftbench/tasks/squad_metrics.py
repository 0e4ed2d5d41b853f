"""SQuAD metrics, computed exactly as the official evaluation scripts do (pure functions, no I/O).

v1.1 follows `evaluate-v1.1.py`, v2.0 follows `evaluate-v2.0.py` (Rajpurkar et al.). The two scripts differ in
details that change numbers, so each keeps its own F1:
- v1.1 gives F1 0 whenever no normalised token is shared, even when both sides are empty;
- v2.0 scores an empty prediction or gold as 1 only when both are empty, drops gold answers that normalise to
  the empty string, and treats a question with no gold answer as having the single gold answer "".

Inputs are aligned lists (one entry per question) instead of the scripts' id-keyed dicts; order stands in for
the prediction file's key order wherever the scripts depend on it (ties in `find_best_thresh`).
All scores are on the 0-100 scale of the official scripts; thresholds are in the units of `na_probs`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower case, drop ASCII punctuation, drop the articles a/an/the, collapse white space."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


# --- v1.1 ----------------------------------------------------------------------------------------------------
def exact_match_v1(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_v1(prediction: str, gold: str) -> float:
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def squad_v1_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """`exact_match` and `f1`: per question the best over its gold answers, averaged, times 100."""
    _check_aligned(predictions, references)
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for pred, golds in zip(predictions, references, strict=True):
        if not golds:
            # The v1.1 script would crash (max of an empty sequence); say what is wrong instead.
            raise ValueError("a SQuAD v1.1 reference has no gold answer; unanswerable questions need the v2.0 metric")
        em += max(exact_match_v1(pred, g) for g in golds)
        f1 += max(f1_v1(pred, g) for g in golds)
    n = len(predictions)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


# --- v2.0 ----------------------------------------------------------------------------------------------------
def _tokens_v2(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_v2(gold: str, prediction: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def f1_v2(gold: str, prediction: str) -> float:
    gold_tokens, pred_tokens = _tokens_v2(gold), _tokens_v2(prediction)
    if not gold_tokens or not pred_tokens:
        # An empty answer is right only against an empty answer (the no-answer case).
        return float(gold_tokens == pred_tokens)
    return _token_f1(pred_tokens, gold_tokens)


def gold_answers_v2(answers: Sequence[str]) -> list[str]:
    """The gold list the v2.0 script scores against: answers that normalise to nothing are dropped, and an
    unanswerable question gets [''] so that only the empty prediction is right."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def squad_v2_raw_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[float], list[float]]:
    """Per-question exact and F1 (0/1 scale) before any no-answer threshold (`get_raw_scores`)."""
    _check_aligned(predictions, references)
    exact, f1 = [], []
    for pred, answers in zip(predictions, references, strict=True):
        golds = gold_answers_v2(answers)
        exact.append(float(max(exact_v2(g, pred) for g in golds)))
        f1.append(max(f1_v2(g, pred) for g in golds))
    return exact, f1


def apply_no_ans_threshold(
    scores: Sequence[float], na_probs: Sequence[float], has_ans: Sequence[bool], na_prob_thresh: float
) -> list[float]:
    """Questions whose na_prob exceeds the threshold count as answered with '' (right iff unanswerable)."""
    return [float(not h) if p > na_prob_thresh else s for s, p, h in zip(scores, na_probs, has_ans, strict=True)]


def find_best_thresh(
    predictions: Sequence[str], scores: Sequence[float], na_probs: Sequence[float], has_ans: Sequence[bool]
) -> tuple[float, float]:
    """Best score over no-answer thresholds, and the threshold, as `find_best_thresh` in evaluate-v2.0.py.

    Starts from 'every question answered with the empty string' (all unanswerable ones right) and, in
    increasing na_prob order, lets each question keep its prediction instead; the running score peaks at the
    best threshold. Ties in na_prob keep list order (the script keeps the prediction file's order)."""
    if not scores:
        return 0.0, 0.0
    cur = best = float(sum(1 for h in has_ans if not h))
    best_thresh = 0.0
    for i in sorted(range(len(scores)), key=lambda k: na_probs[k]):
        if has_ans[i]:
            cur += scores[i]
        elif predictions[i]:
            cur -= 1
        if cur > best:
            best, best_thresh = cur, na_probs[i]
    return 100.0 * best / len(scores), float(best_thresh)


def _mean100(values: Sequence[float], keep: Sequence[bool] | None = None) -> tuple[float, int]:
    picked = list(values) if keep is None else [v for v, k in zip(values, keep, strict=True) if k]
    return (100.0 * sum(picked) / len(picked) if picked else 0.0), len(picked)


def squad_v2_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    na_probs: Sequence[float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """The metric dict of evaluate-v2.0.py: exact, f1, total, HasAns_*/NoAns_* (only for splits that have
    questions) and, when `na_probs` is given, best_exact(_thresh) and best_f1(_thresh).

    As in the script, `predictions` are scored as given, except that a question whose na_prob exceeds
    `na_prob_thresh` counts as answered with ''. Passing each question's best non-empty answer with its
    no-answer score lets the best-threshold search consider answering every question."""
    exact_raw, f1_raw = squad_v2_raw_scores(predictions, references)
    has_ans = [bool(answers) for answers in references]
    probs = [0.0] * len(predictions) if na_probs is None else [float(p) for p in na_probs]
    if len(probs) != len(predictions):
        raise ValueError(f"{len(probs)} na_probs for {len(predictions)} predictions")
    exact = apply_no_ans_threshold(exact_raw, probs, has_ans, na_prob_thresh)
    f1 = apply_no_ans_threshold(f1_raw, probs, has_ans, na_prob_thresh)
    out: dict[str, float] = {}
    for prefix, keep in (("", None), ("HasAns_", has_ans), ("NoAns_", [not h for h in has_ans])):
        if keep is None or any(keep):
            out[f"{prefix}exact"], total = _mean100(exact, keep)
            out[f"{prefix}f1"], _ = _mean100(f1, keep)
            out[f"{prefix}total"] = total
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = find_best_thresh(predictions, exact_raw, probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = find_best_thresh(predictions, f1_raw, probs, has_ans)
    return out


# --- dispatch ------------------------------------------------------------------------------------------------
def compute(
    version_2: bool,
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    na_probs: Sequence[float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """Metrics of SQuAD v2.0 (`version_2`) or v1.1 from predicted texts and gold answer-text lists."""
    if version_2:
        return squad_v2_scores(predictions, references, na_probs, na_prob_thresh)
    if na_probs is not None:
        raise ValueError("na_probs are a SQuAD v2.0 notion; v1.1 has no unanswerable questions")
    return squad_v1_scores(predictions, references)


def _check_aligned(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
