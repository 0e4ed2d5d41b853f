"""The nine GLUE tasks as pure data. Metrics and primary metrics follow the GLUE benchmark's conventions."""

from __future__ import annotations

from peftbench.tasks.base import EvalSplit, TaskSpec

_ACC = ("accuracy",)
_ACC_F1 = ("accuracy", "f1", "combined")


def _glue(config: str, fields: tuple[str, ...], num_labels: int, metrics: tuple[str, ...], primary: str, **kw):
    return TaskSpec(
        name=config,
        version="1",
        family="glue",
        hub_path="nyu-mll/glue",
        hub_config=config,
        local_dir=f"glue/{config}",
        text_fields=fields,
        head=kw.pop("head", "classification"),
        num_labels=num_labels,
        primary_metric=primary,
        metric_names=metrics,
        eval_splits=kw.pop("eval_splits", (EvalSplit("validation", sample_rows=2000),)),
        **kw,
    )


COLA = _glue(
    "cola",
    ("sentence",),
    2,
    ("matthews_correlation",),
    "matthews_correlation",
    description="grammatical acceptability (Matthews corr.)",
)
SST2 = _glue("sst2", ("sentence",), 2, _ACC, "accuracy", description="sentiment, single sentence")
MRPC = _glue("mrpc", ("sentence1", "sentence2"), 2, _ACC_F1, "combined", description="paraphrase (acc/F1)")
QQP = _glue("qqp", ("question1", "question2"), 2, _ACC_F1, "combined", description="question paraphrase (acc/F1)")
STSB = _glue(
    "stsb",
    ("sentence1", "sentence2"),
    1,
    ("pearson", "spearmanr", "combined"),
    "combined",
    head="regression",
    description="semantic similarity, regression (Pearson/Spearman)",
)
MNLI = _glue(
    "mnli",
    ("premise", "hypothesis"),
    3,
    ("accuracy",),
    "accuracy",
    eval_splits=(EvalSplit("validation_matched", "", 2000), EvalSplit("validation_mismatched", "mm_", 2000)),
    description="natural language inference, matched and mismatched",
)
QNLI = _glue("qnli", ("question", "sentence"), 2, _ACC, "accuracy", description="question/sentence entailment")
RTE = _glue("rte", ("sentence1", "sentence2"), 2, _ACC, "accuracy", description="textual entailment")
WNLI = _glue("wnli", ("sentence1", "sentence2"), 2, _ACC, "accuracy", description="Winograd NLI")
