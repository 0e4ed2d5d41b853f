"""GLUE metrics as a local `evaluate` module: `evaluate.load("<this dir>", config_name="<glue config>")`.

Same configs, inputs and result keys as the hub's `glue` metric, kept in the project because the hub is
unreachable offline. Besides the hub's keys, mrpc/qqp and stsb also return `combined` (the mean of their two
metrics), the number GLUE papers rank by. Self-contained on purpose: evaluate copies this file alone into its
modules cache before importing it, so it may import installed libraries but no sibling files.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={International Conference on Learning Representations},
  year={2019}
}
"""

_DESCRIPTION = """\
Metrics of the GLUE benchmark, one config per task: cola -> matthews_correlation; sst2, mnli, qnli, rte,
wnli -> accuracy; mrpc, qqp -> accuracy, f1, combined; stsb -> pearson, spearmanr, combined.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (int class ids), or predicted scores (floats) for stsb.
    references: gold labels, same type and length as predictions.
Returns: a dict of plain Python floats, keys as listed in the description for the chosen config.
Examples:
    >>> glue = evaluate.load("peftbench/tasks/metrics/glue", config_name="mrpc")
    >>> glue.compute(predictions=[1, 0, 1], references=[1, 1, 1])
    {'accuracy': 0.666..., 'f1': 0.8, 'combined': 0.733...}
"""

ACCURACY_CONFIGS = ("sst2", "mnli", "mnli_mismatched", "mnli_matched", "qnli", "rte", "wnli", "hans", "ax")
F1_CONFIGS = ("mrpc", "qqp")
CONFIGS = ("cola", "stsb", *F1_CONFIGS, *ACCURACY_CONFIGS)


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float((preds == labels).mean())


def acc_and_f1(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    acc = accuracy(preds, labels)
    # Binary F1 of the positive class (1 = paraphrase / duplicate), as GLUE reports it; 0 when nothing is
    # predicted or labelled positive, without the warning.
    f1 = float(f1_score(y_true=labels, y_pred=preds, zero_division=0.0))
    return {"accuracy": acc, "f1": f1, "combined": (acc + f1) / 2}


def pearson_and_spearman(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    pearson = float(pearsonr(preds, labels).statistic)
    spearman = float(spearmanr(preds, labels).statistic)
    return {"pearson": pearson, "spearmanr": spearman, "combined": (pearson + spearman) / 2}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Glue(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in CONFIGS:
            # KeyError like the hub's glue metric, so callers that handle one handle both.
            raise KeyError(f"unknown GLUE metric config {self.config_name!r}; pass config_name= one of {list(CONFIGS)}")
        # float64 for stsb (the hub's float32 rounds scores) so Pearson/Spearman see them exactly as given.
        dtype = "float64" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
            codebase_urls=["https://gluebenchmark.com/"],
            reference_urls=["https://arxiv.org/abs/1804.07461"],
            # No "numpy" format: datasets' numpy formatter casts floats to float32. Lists are converted below.
        )

    def _compute(self, predictions: list, references: list) -> dict[str, float]:
        predictions, references = np.asarray(predictions), np.asarray(references)
        if self.config_name == "cola":
            return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
        if self.config_name == "stsb":
            return pearson_and_spearman(predictions, references)
        if self.config_name in F1_CONFIGS:
            return acc_and_f1(predictions, references)
        return {"accuracy": accuracy(predictions, references)}
