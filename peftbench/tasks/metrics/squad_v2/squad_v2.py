"""SQuAD v2.0 as a local `evaluate` module, in the input format of the Hugging Face `squad_v2` metric.

Load it offline with `evaluate.load(<this directory>)`. The numbers come from peftbench.tasks.squad_metrics,
which follows the official evaluate-v2.0.py run with `--na-prob-file` (so best_* are always reported).
"""

import datasets
import evaluate

from peftbench.tasks.squad_metrics import squad_v2_scores

_DESCRIPTION = (
    "SQuAD v2.0 exact and F1 (0-100) overall, on answerable (HasAns) and unanswerable (NoAns) questions, and at the "
    "best no-answer threshold, as the official evaluate-v2.0.py computes them."
)
_CITATION = """@inproceedings{rajpurkar-etal-2018-know,
  title = {Know What You Don{'}t Know: Unanswerable Questions for {SQ}u{AD}},
  author = {Rajpurkar, Pranav and Jia, Robin and Liang, Percy},
  booktitle = {Proceedings of ACL 2018},
  year = {2018}
}"""
_INPUTS = """
Args:
    predictions: list of {"id": str, "prediction_text": str, "no_answer_probability": float}; an empty
        prediction_text means "no answer".
    references: list of {"id": str, "answers": {"text": [str], "answer_start": [int]}}; empty lists mark an
        unanswerable question.
    no_answer_threshold: a question whose no_answer_probability exceeds it counts as answered with "" (1.0).
Returns:
    exact, f1, total, HasAns_exact, HasAns_f1, HasAns_total, NoAns_exact, NoAns_f1, NoAns_total (the splits
    that have questions), best_exact, best_exact_thresh, best_f1, best_f1_thresh.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class SquadV2(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": {
                        "id": datasets.Value("string"),
                        "prediction_text": datasets.Value("string"),
                        "no_answer_probability": datasets.Value("float32"),
                    },
                    "references": {
                        "id": datasets.Value("string"),
                        "answers": {
                            "text": datasets.List(datasets.Value("string")),
                            "answer_start": datasets.List(datasets.Value("int32")),
                        },
                    },
                }
            ),
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references, no_answer_threshold: float = 1.0):
        by_id = {p["id"]: p for p in predictions}
        missing = [r["id"] for r in references if r["id"] not in by_id]
        if missing:
            # The official v2.0 script cannot score the HasAns/NoAns splits with questions left out either.
            raise ValueError(f"{len(missing)} questions have no prediction, e.g. {missing[:3]}")
        picked = [by_id[r["id"]] for r in references]
        return squad_v2_scores(
            [p["prediction_text"] for p in picked],
            [list(r["answers"]["text"]) for r in references],
            [p["no_answer_probability"] for p in picked],
            no_answer_threshold,
        )
