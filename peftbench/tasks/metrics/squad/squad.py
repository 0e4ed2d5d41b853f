"""SQuAD v1.1 as a local `evaluate` module, in the input format of the Hugging Face `squad` metric.

Load it offline with `evaluate.load(<this directory>)`. The numbers come from peftbench.tasks.squad_metrics,
which follows the official evaluate-v1.1.py.
"""

import datasets
import evaluate

from peftbench.tasks.squad_metrics import squad_v1_scores

_DESCRIPTION = "SQuAD v1.1 exact match and token F1 (0-100), as the official evaluate-v1.1.py computes them."
_CITATION = """@inproceedings{rajpurkar-etal-2016-squad,
  title = {{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text},
  author = {Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle = {Proceedings of EMNLP 2016},
  year = {2016}
}"""
_INPUTS = """
Args:
    predictions: list of {"id": str, "prediction_text": str}.
    references: list of {"id": str, "answers": {"text": [str], "answer_start": [int]}}.
Returns:
    {"exact_match": float, "f1": float}, over the references (a question without a prediction scores 0).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class Squad(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
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

    def _compute(self, predictions, references):
        by_id = {p["id"]: p["prediction_text"] for p in predictions}
        answered = [r for r in references if r["id"] in by_id]
        if not answered:
            return {"exact_match": 0.0, "f1": 0.0}
        scores = squad_v1_scores([by_id[r["id"]] for r in answered], [list(r["answers"]["text"]) for r in answered])
        # The official script averages over all questions, counting one without a prediction as 0.
        return {k: v * len(answered) / len(references) for k, v in scores.items()}
