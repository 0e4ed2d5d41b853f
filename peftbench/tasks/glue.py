"""The nine GLUE tasks as pure data. Metrics and primary metrics follow the GLUE benchmark's conventions."""

from __future__ import annotations

from peftbench.tasks.base import EvalSplit, TaskSpec

_ACC = ("accuracy",)
_ACC_F1 = ("accuracy", "f1", "combined")
# Sentence pairs cost ~4-5x SST-2's tokens per row (MRPC ~53, RTE ~70 vs ~13), so the quick profile's 4,000
# rows would take ~4 min per run on 2 CPU cores; 2,000 rows in batches of 16 keep a run near 1.5 min and give
# the same number of optimizer steps as the profile's default. One epoch this short leaves the adapters near the
# majority class on these small sets: the quick profile answers "does it run, at what cost"; accuracy claims on
# pair tasks want --profile standard.
_PAIR_QUICK = (("quick", (("train_rows", 2000), ("batch_size", 16))),)


def _glue(config: str, fields: tuple[str, ...], num_labels: int, metrics: tuple[str, ...], primary: str, **kw):
    return TaskSpec(
        name=config,
        version="1",
        family="glue",
        metric_module="glue",
        metric_config=config,
        metric_scale=100.0,
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
MRPC = _glue(
    "mrpc",
    ("sentence1", "sentence2"),
    2,
    _ACC_F1,
    "combined",
    profile_overrides=_PAIR_QUICK,
    description="paraphrase (acc/F1)",
)
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
QNLI = _glue(
    "qnli",
    ("question", "sentence"),
    2,
    _ACC,
    "accuracy",
    # The regression suite's sentence pair. Measured on the sample with MiniLM and LoRA: 1,000 rows leave every
    # method at chance (0.52) whatever the batch size, 2,000 rows in batches of 16 reach ~0.74, so a broken
    # method shows. Pairs need their full length (the profile's 48 tokens cut the answer sentence).
    profile_overrides=(("regress", (("train_rows", 2000), ("batch_size", 16), ("max_length", 128))),),
    description="question/sentence entailment",
)
RTE = _glue(
    "rte",
    ("sentence1", "sentence2"),
    2,
    _ACC,
    "accuracy",
    profile_overrides=_PAIR_QUICK,
    description="textual entailment",
)
WNLI = _glue("wnli", ("sentence1", "sentence2"), 2, _ACC, "accuracy", description="Winograd NLI")
