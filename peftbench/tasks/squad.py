"""SQuAD v1.1 and v2.0: extractive question answering, the span-task escape hatch of TaskSpec.

Featurising follows the Hugging Face `run_qa.py` recipe: the question comes first and only the context is cut
(`truncation="only_second"`) into overlapping windows, `doc_stride` tokens of overlap apart. Training windows
that do not hold the whole answer, and unanswerable questions, point both positions at the CLS token.
Post-processing takes the n-best start and end logits of every window, keeps spans inside the context of at
most `max_answer_length` tokens, and picks the best span of an example across its windows; for v2.0 the
example's null score (CLS start + CLS end, the smallest over its windows) competes with that span.

Soft data problems (an answer that does not sit at its answer_start, an empty context, a question too long to
leave the context any room) are logged with counts by `featurize`. Training drops those rows
(`training_rows`); evaluation keeps every row, so scores are always over the whole split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from peftbench.errors import UsageError
from peftbench.tasks import squad_metrics
from peftbench.tasks.base import EvalSplit, Features, Scored, TaskSpec

logger = logging.getLogger(__name__)

# Null score minus best span score for an example without any valid span: above any real logit difference,
# so the prediction is empty under every sensible threshold, yet finite so that records stay valid JSON.
NO_SPAN_DIFF = 1e9

_V1_METRICS = ("exact_match", "f1")
_V2_METRICS = (
    "exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1",
    "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh",
)  # fmt: skip

# Soft problems: what the row has, and what evaluation does with it (training always skips the row).
_PROBLEMS = {
    "bad_span": (
        "an answer text that does not match the context at its answer_start",
        "scoring uses only answer texts",
    ),
    "empty_context": ("an empty context", "nothing to extract, so the prediction is empty"),
    "long_question": ("a question too long for max_length and doc_stride", "the question is cut to fit"),
}


@dataclass(frozen=True)
class SquadTask(TaskSpec):
    version_2_with_negative: bool = field(
        default=False, metadata={"help": "SQuAD v2.0: questions may have no answer (the null span competes)"}
    )
    doc_stride: int = field(default=128, metadata={"help": "tokens of overlap between consecutive context windows"})
    n_best: int = field(default=20, metadata={"help": "start and end candidates kept per window"})
    max_answer_length: int = field(default=30, metadata={"help": "longest predicted answer, in tokens"})
    null_threshold: float = field(
        default=0.0, metadata={"help": "v2.0: predict no answer when null score minus best span score exceeds this"}
    )

    # --- data checks -------------------------------------------------------------------------------------
    def required_fields(self) -> tuple[str, ...]:
        return ("id", "context", "question", "answers")

    def check_row(self, row: dict[str, Any]) -> str | None:
        """Structural problems only; content problems are handled (and counted) by `featurize`."""
        for f in self.required_fields():
            if f not in row or row[f] is None:
                return f"missing field {f!r}"
        if not isinstance(row["id"], str) or not row["id"]:
            return "id must be a non-empty string"
        if not isinstance(row["context"], str):
            return "context must be a string"
        if not isinstance(row["question"], str) or not row["question"].strip():
            return "empty or non-text field 'question'"
        answers = row["answers"]
        if not isinstance(answers, dict) or not isinstance(answers.get("text"), list):
            return "answers must be {'text': [...], 'answer_start': [...]}"
        texts, starts = answers["text"], answers.get("answer_start")
        if not isinstance(starts, list) or len(starts) != len(texts):
            return "answers.text and answers.answer_start must be lists of equal length"
        if not all(isinstance(t, str) for t in texts):
            return "answers.text must hold strings"
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in starts):
            return "answers.answer_start must hold non-negative integers"
        if not texts and not self.version_2_with_negative:
            return "a SQuAD v1.1 question needs at least one answer (unanswerable questions belong to squad_v2)"
        return None

    def dev_key(self, row: dict[str, Any]) -> str:
        # A paragraph's questions are held out together: a dev question whose context was trained on would leak.
        return row["context"]

    def question_token_limit(self, tokenizer, max_length: int) -> int:
        """Longest question (in tokens) that still leaves the context more room than the window overlap."""
        limit = max_length - tokenizer.num_special_tokens_to_add(pair=True) - self.doc_stride - 1
        if limit < 1:
            raise UsageError(
                f"max_length {max_length} leaves no room for {self.name}'s doc_stride {self.doc_stride}: "
                f"use a max_length of at least {max_length - limit + 1} (384 is usual)"
            )
        return limit

    def audit(self, rows: list[dict], tokenizer, max_length: int) -> dict[str, list[int]]:
        """Row indices per soft problem (see _PROBLEMS)."""
        limit = self.question_token_limit(tokenizer, max_length)
        q_ids = tokenizer([_question(r) for r in rows], add_special_tokens=False)["input_ids"]
        found: dict[str, list[int]] = {kind: [] for kind in _PROBLEMS}
        for i, (row, ids) in enumerate(zip(rows, q_ids, strict=True)):
            context, answers = row["context"], row["answers"]
            if not context.strip():
                found["empty_context"].append(i)
            elif not all(
                _span_matches(context, t, s) for t, s in zip(answers["text"], answers["answer_start"], strict=True)
            ):
                found["bad_span"].append(i)
            if len(ids) > limit:
                found["long_question"].append(i)
        return found

    def training_rows(self, rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], list[str]]:
        """The rows fit for training and one warning per kind of problem that made rows be skipped.
        `featurize(train=True)` calls this and logs the warnings."""
        found = self.audit(rows, tokenizer, max_length)
        skip = set().union(*found.values())
        warnings = [
            f"{self.name}: skipped {len(idx)} of {len(rows)} training rows with {_PROBLEMS[kind][0]} "
            f"(ids {_some_ids(rows, idx)})"
            for kind, idx in found.items()
            if idx
        ]
        return [r for i, r in enumerate(rows) if i not in skip], warnings

    # --- model -------------------------------------------------------------------------------------------
    def model_kwargs(self) -> dict[str, Any]:
        return {}

    def model_class(self):
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering

    # --- features ----------------------------------------------------------------------------------------
    def featurize(self, rows: list[dict], tokenizer, max_length: int, train: bool) -> Features:
        """Windows of question + context. `columns`: input_ids, attention_mask, token_type_ids (when the
        tokenizer makes them) and, for training, start_positions/end_positions, unpadded. `meta` (evaluation):
        example_index and example_id per window, offset_mapping with None for non-context tokens, cls_index.
        Training drops rows with soft problems first (`training_rows`); its example_index counts kept rows."""
        if not getattr(tokenizer, "is_fast", False):
            raise UsageError(f"{self.name} needs a fast (Rust) tokenizer for offset mappings; this model has none")
        if train:
            rows, warnings = self.training_rows(rows, tokenizer, max_length)
            for w in warnings:
                logger.warning(w)
            if not rows:
                raise UsageError(f"{self.name}: no usable training rows left (see the warnings above); check the data")
            questions = [_question(r) for r in rows]
        else:
            questions = self._evaluation_questions(rows, tokenizer, max_length)
        enc = tokenizer(
            questions,
            [r["context"] for r in rows],
            truncation="only_second",
            max_length=max_length,
            stride=self.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=False,
        )
        example_index = list(enc["overflow_to_sample_mapping"])
        columns = {k: [list(x) for x in enc[k]] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        # Offsets of context tokens only, so that no span can start or end in the question or a special token.
        offsets = [
            [
                tuple(o) if sid == 1 else None
                for o, sid in zip(enc["offset_mapping"][f], enc.sequence_ids(f), strict=True)
            ]
            for f in range(len(example_index))
        ]
        cls_index = [_cls_index(ids, tokenizer) for ids in columns["input_ids"]]
        if train:
            positions = [
                _positions(rows[ex]["answers"], offs, cls)
                for ex, offs, cls in zip(example_index, offsets, cls_index, strict=True)
            ]
            columns["start_positions"] = [p[0] for p in positions]
            columns["end_positions"] = [p[1] for p in positions]
            return Features(columns, {"example_index": example_index})
        meta = {
            "example_index": example_index,
            "example_id": [rows[ex]["id"] for ex in example_index],
            "offset_mapping": offsets,
            "cls_index": cls_index,
        }
        return Features(columns, meta)

    def _evaluation_questions(self, rows: list[dict], tokenizer, max_length: int) -> list[str]:
        found = self.audit(rows, tokenizer, max_length)
        for kind, idx in found.items():
            if idx:
                what, consequence = _PROBLEMS[kind]
                logger.warning(
                    f"{self.name}: {len(idx)} of {len(rows)} evaluation rows have {what}; kept, {consequence} "
                    f"(ids {_some_ids(rows, idx)})"
                )
        questions = [_question(r) for r in rows]
        limit = self.question_token_limit(tokenizer, max_length)
        for i in found["long_question"]:
            questions[i] = _cut_question(questions[i], tokenizer, limit)
        return questions

    # --- scoring -----------------------------------------------------------------------------------------
    def postprocess(
        self, outputs: dict[str, list[np.ndarray]], features: Features, rows: list[dict]
    ) -> tuple[list[str], list[float]]:
        """Per example: the text of the best span over all its windows ('' when no span is valid), and the
        null score minus that span's score (NO_SPAN_DIFF when there is no valid span)."""
        starts, ends = outputs["start_logits"], outputs["end_logits"]
        meta = features.meta
        if not (len(starts) == len(ends) == len(meta["example_index"])):
            raise ValueError(f"{len(starts)} start and {len(ends)} end logits for {len(features)} features")
        best_score = np.full(len(rows), -np.inf)
        null_score = np.full(len(rows), np.inf)
        best_text = [""] * len(rows)
        for f, (ex, offsets, cls) in enumerate(
            zip(meta["example_index"], meta["offset_mapping"], meta["cls_index"], strict=True)
        ):
            start_logits = np.asarray(starts[f], dtype=np.float64).reshape(-1)
            end_logits = np.asarray(ends[f], dtype=np.float64).reshape(-1)
            null_score[ex] = min(null_score[ex], start_logits[cls] + end_logits[cls])
            n = min(len(offsets), len(start_logits), len(end_logits))
            top_starts = np.argsort(-start_logits[:n], kind="stable")[: self.n_best]
            top_ends = np.argsort(-end_logits[:n], kind="stable")[: self.n_best]
            for s in top_starts:
                if offsets[s] is None:
                    continue
                for e in top_ends:
                    if offsets[e] is None or e < s or e - s + 1 > self.max_answer_length:
                        continue
                    span_score = start_logits[s] + end_logits[e]
                    if span_score > best_score[ex]:
                        best_score[ex] = span_score
                        best_text[ex] = rows[ex]["context"][offsets[s][0] : offsets[e][1]]
        if np.isinf(null_score).any():
            raise ValueError("some examples have no feature; featurize and score must get the same rows")
        diffs = [
            float(nul - b) if np.isfinite(b) else NO_SPAN_DIFF for nul, b in zip(null_score, best_score, strict=True)
        ]
        return best_text, diffs

    def score(self, outputs: dict[str, list[np.ndarray]], features: Features, rows: list[dict]) -> Scored:
        """Official-script metrics. predictions: the final text per example ('' = no answer); references:
        the gold answer texts per example (empty for unanswerable ones)."""
        texts, diffs = self.postprocess(outputs, features, rows)
        references = [list(r["answers"]["text"]) for r in rows]
        if not self.version_2_with_negative:
            return Scored(self._named(self.compute_metrics(texts, references)), texts, references)
        predictions = ["" if d > self.null_threshold else t for t, d in zip(texts, diffs, strict=True)]
        # The best-threshold search needs each question's best non-empty answer, not the thresholded one; with
        # na_prob_thresh = null_threshold the plain exact/f1 are those of `predictions`.
        metrics = squad_metrics.squad_v2_scores(texts, references, diffs, self.null_threshold)
        return Scored(self._named(metrics), predictions, references)

    def _named(self, metrics: dict[str, float]) -> dict[str, float]:
        # Row totals are left out (the record has the row counts); HasAns_*/NoAns_* are absent, as in the
        # official script, for a split without answerable/unanswerable questions.
        return {k: float(metrics[k]) for k in self.metric_names if k in metrics}

    def compute_metrics(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        """Official metrics from final texts and gold answer lists (v2.0: without best-threshold search)."""
        return squad_metrics.compute(self.version_2_with_negative, predictions, references)

    def metric_on(self, predictions: list, references: list) -> float:
        return self.compute_metrics(predictions, references)[self.primary_metric]


# --- helpers -------------------------------------------------------------------------------------------------
def _question(row: dict) -> str:
    # Some SQuAD questions start with many spaces; tokenizers that keep spaces would spend tokens on them.
    return row["question"].lstrip()


def _span_matches(context: str, text: str, start: int) -> bool:
    return bool(text.strip()) and context[start : start + len(text)] == text


def _some_ids(rows: list[dict], idx: list[int], k: int = 3) -> str:
    shown = ", ".join(str(rows[i]["id"]) for i in idx[:k])
    return shown + (", ..." if len(idx) > k else "")


def _cls_index(input_ids: list[int], tokenizer) -> int:
    cls = tokenizer.cls_token_id
    return input_ids.index(cls) if cls is not None and cls in input_ids else 0


def _positions(answers: dict, offsets: list[tuple[int, int] | None], cls: int) -> tuple[int, int]:
    """Token start/end of the first gold answer in this window, or (cls, cls) when it is not wholly inside."""
    if not answers["text"]:
        return cls, cls
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    context = [t for t, o in enumerate(offsets) if o is not None]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return cls, cls
    # Context offsets increase, so the last token starting at or before the answer begins it and the first
    # token ending at or after the answer ends it (tokens the answer only partly covers are included).
    start = max(t for t in context if offsets[t][0] <= start_char)
    end = min(t for t in context if offsets[t][1] >= end_char)
    return start, end


def _cut_question(question: str, tokenizer, limit: int) -> str:
    """The question's first `limit` tokens, cut in the text so that the pair can still be tokenised."""
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    keep = limit
    while keep > 0:
        cut = question[: enc["offset_mapping"][keep - 1][1]]
        # Word pieces can re-tokenise differently once cut; shorten until the cut text fits.
        if len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= limit:
            return cut
        keep -= 1
    return ""


def _squad(name: str, hub_path: str, v2: bool, description: str) -> SquadTask:
    return SquadTask(
        name=name,
        version="1",
        family="squad",
        metric_module=name,
        subset="head",
        one_feature_per_row=False,
        hub_path=hub_path,
        hub_config=None,
        local_dir=name,
        text_fields=("question", "context"),
        head="span",
        num_labels=2,
        primary_metric="f1",
        metric_names=_V2_METRICS if v2 else _V1_METRICS,
        eval_splits=(EvalSplit("validation"),),
        label_field="answers",
        max_length=384,
        # Each question costs one or more 384-token windows, so the quick profile trains on fewer rows with
        # shorter windows (most contexts still fit in one) for `make bench TASK=squad` (4 runs) to fit in 15
        # minutes on 2 CPU cores. Span heads learn from optimizer steps, not rows: measured with LoRA (0.3M,
        # seed 0, 300 eval rows), 600 rows in batches of 8 (75 steps) gave F1 10.2 (10.5 at 3x the lr), barely
        # above an untrained head's 7.5, and 900 rows in batches of 4 (225 steps) gave F1 34.3.
        profile_overrides=(
            ("quick", (("train_rows", 800), ("batch_size", 4), ("eval_rows", 300), ("max_length", 256))),
        ),
        description=description,
        version_2_with_negative=v2,
    )


SQUAD = _squad("squad", "rajpurkar/squad", False, "SQuAD v1.1 extractive QA (EM/F1)")
SQUAD_V2 = _squad("squad_v2", "rajpurkar/squad_v2", True, "SQuAD v2.0 extractive QA with unanswerable questions")
