"""Task specs: what a task's data looks like, how it is featurised, and how predictions are scored.

The runner knows a task only through this class. GLUE tasks are pure data on top of it; span tasks (SQuAD)
override `featurize` and `score` (the code escape hatch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EvalSplit:
    """An evaluation split and the prefix its metrics get in the record (MNLI: '' matched, 'mm_' mismatched)."""

    split: str
    prefix: str = ""
    # Rows kept in the bundled sample; None keeps all of them.
    sample_rows: int | None = None


@dataclass(frozen=True)
class Features:
    """Model inputs for one split: one dict of equal-length lists per field, plus per-feature bookkeeping."""

    columns: dict[str, list]
    # Span tasks: example id and offsets per feature, to map logits back to text.
    meta: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.columns["input_ids"])


@dataclass(frozen=True)
class Scored:
    metrics: dict[str, float]
    # One entry per evaluation example, enough to recompute the primary metric on any subset
    # (paired bootstrap): predictions and references.
    predictions: list
    references: list


@dataclass(frozen=True)
class TaskSpec:
    name: str
    version: str
    family: str
    hub_path: str
    hub_config: str | None
    # Path of the task's files under a local data root, e.g. "glue/sst2" or "squad".
    local_dir: str
    text_fields: tuple[str, ...]
    head: str  # "classification" | "regression" | "span"
    num_labels: int
    primary_metric: str
    metric_names: tuple[str, ...]
    higher_is_better: bool = True
    train_split: str = "train"
    eval_splits: tuple[EvalSplit, ...] = (EvalSplit("validation"),)
    label_field: str = "label"
    train_sample_rows: int = 8000
    # Tokens per example when the run does not set max_length (SQuAD: the window length).
    max_length: int = 128
    # Per-profile train settings that differ for this task (e.g. SQuAD's quick profile trains on fewer rows,
    # as each row costs several 384-token windows). Applied over the profile, under --set.
    profile_overrides: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    description: str = ""
    # The local evaluate module (a directory under tasks/metrics/) and its config; None: the task's name.
    metric_module: str = ""
    metric_config: str | None = None
    # Tables show metrics times this (GLUE's convention is percent; SQuAD's metrics already are).
    metric_scale: float = 1.0
    # How `train_rows`/`eval_rows` cut the data: "random" (a fixed subset, the same for every seed and method) or
    # "head" (the first rows, e.g. to keep a paragraph's questions together).
    subset: str = "random"
    # False where one row becomes several features (SQuAD's windows): the step count is known only after featurising.
    one_feature_per_row: bool = True

    def profile_settings(self, profile: str) -> dict[str, Any]:
        return dict(dict(self.profile_overrides).get(profile, ()))

    # --- data checks -------------------------------------------------------------------------------------
    def required_fields(self) -> tuple[str, ...]:
        return (*self.text_fields, self.label_field)

    def check_row(self, row: dict[str, Any]) -> str | None:
        """Why a row is unusable, or None. Called with file and line number by the data loader."""
        for f in self.required_fields():
            if f not in row or row[f] is None:
                return f"missing field {f!r}"
        for f in self.text_fields:
            if not isinstance(row[f], str) or not row[f].strip():
                return f"empty or non-text field {f!r}"
        label = row[self.label_field]
        if self.head == "regression":
            if not isinstance(label, (int, float)) or isinstance(label, bool):
                return f"label {label!r} is not a number"
        elif not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < self.num_labels:
            return f"label {label!r} out of range 0..{self.num_labels - 1}"
        return None

    def dev_key(self, row: dict[str, Any]) -> str:
        """What identifies a row's content when a dev split is carved out of the training rows: rows with the
        same key are held out together."""
        return "\x1f".join(row[f] for f in self.text_fields)

    # --- model -------------------------------------------------------------------------------------------
    def model_kwargs(self) -> dict[str, Any]:
        if self.head == "regression":
            return {"num_labels": 1, "problem_type": "regression"}
        return {"num_labels": self.num_labels, "problem_type": "single_label_classification"}

    # --- features ----------------------------------------------------------------------------------------
    def featurize(self, rows: list[dict], tokenizer, max_length: int, train: bool) -> Features:
        texts = [[r[f] for r in rows] for f in self.text_fields]
        enc = tokenizer(*texts, truncation=True, max_length=max_length, padding=False)
        columns = {k: list(v) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        dtype = float if self.head == "regression" else int
        columns["labels"] = [dtype(r[self.label_field]) for r in rows]
        return Features(columns)

    # --- scoring -----------------------------------------------------------------------------------------
    def predictions_from_logits(self, logits: np.ndarray) -> list:
        if self.head == "regression":
            return [float(x) for x in np.asarray(logits).reshape(-1)]
        return [int(x) for x in np.asarray(logits).argmax(-1)]

    def model_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def score(self, outputs: dict[str, list[np.ndarray]], features: Features, rows: list[dict]) -> Scored:
        """`outputs` maps each model output name ('logits', or 'start_logits'/'end_logits') to one array per
        feature, in feature order, trimmed to the feature's own (unpadded) length where it has one."""
        from peftbench.tasks.metrics import compute

        preds = self.predictions_from_logits(np.stack(outputs["logits"]))
        refs = [r[self.label_field] for r in rows]
        return Scored(compute(self, preds, refs), preds, refs)

    def metric_on(self, predictions: list, references: list) -> float:
        """The primary metric on a subset of examples (paired bootstrap)."""
        from peftbench.tasks.metrics import compute

        return compute(self, predictions, references)[self.primary_metric]
