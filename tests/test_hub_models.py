"""Hub model ids: with or without an organisation, pinned in the config (and so the record and its hash) to the
commit and weights hash they resolve to, online from the hub's file list, offline from the local hub cache. The
hub is never reached: its answers are mocked, and the cache is a folder laid out as huggingface_hub lays it out."""

from __future__ import annotations

import hashlib
import shutil
import types

import huggingface_hub
import pytest
from huggingface_hub import errors
from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

from peftbench.errors import UsageError
from peftbench.harness.run import plan
from peftbench.harness.run.models import resolve_model, sha256_file, weights_digest
from tests.helpers import quick_run

SHA = "0123456789abcdef0123456789abcdef01234567"
WEIGHTS = "ab" * 32


def _info(sha: str = SHA, files: dict[str, str] | None = None):
    files = {"model.safetensors": WEIGHTS} if files is None else files
    siblings = [RepoSibling("config.json")] + [RepoSibling(n, lfs=BlobLfsInfo(10, h, 100)) for n, h in files.items()]
    return types.SimpleNamespace(sha=sha, siblings=siblings)


def _raises(exc: Exception):
    def fake(*a, **k):
        raise exc

    return fake


def _not_found() -> Exception:
    # A 404 as the hub client raises it (built without an HTTP response: nothing is requested).
    err = errors.RepositoryNotFoundError.__new__(errors.RepositoryNotFoundError)
    Exception.__init__(err, "404 Client Error: Repository Not Found")
    return err


@pytest.fixture(autouse=True)
def _fresh_resolution():
    plan._cached_model.cache_clear()
    yield
    plan._cached_model.cache_clear()


@pytest.mark.parametrize("repo_id", ["bert-base-uncased", "google-bert/bert-base-uncased"])
def test_hub_ids_with_or_without_an_organisation_are_pinned(monkeypatch, repo_id):
    asked = []

    def fake_info(rid, revision=None, files_metadata=False, **kw):
        asked.append((rid, revision, files_metadata))
        return _info()

    monkeypatch.setattr(huggingface_hub, "model_info", fake_info)
    ref = resolve_model(repo_id)
    assert asked == [(repo_id, "main", True)]
    assert (ref.model_id, ref.path, ref.revision, ref.sha256) == (repo_id, repo_id, SHA, WEIGHTS)


def test_a_new_commit_is_a_new_config(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: _info(SHA))
    first = resolve_model("bert-base-uncased")
    newer = _info("f" * 40, {"model.safetensors": "cd" * 32})
    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: newer)
    second = resolve_model("bert-base-uncased")
    assert first.revision != second.revision and first.sha256 != second.sha256


def test_sharded_weights_get_one_digest():
    shards = {"model-00001-of-00002.safetensors": "a" * 64, "model-00002-of-00002.safetensors": "b" * 64}
    digest = weights_digest(shards)
    assert digest == weights_digest(dict(reversed(shards.items())))  # order-free
    assert digest not in shards.values() and len(digest) == 64
    assert weights_digest({"model.safetensors": "c" * 64, **shards}) == "c" * 64
    assert weights_digest({"README.md": "d" * 64}) is None


def test_an_unknown_hub_model_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "model_info", _raises(_not_found()))
    with pytest.raises(UsageError, match="unknown model 'bert-base-uncasd': no such model on the hub") as e:
        resolve_model("bert-base-uncasd")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["a/b/c", "-bad", "bad name", "../up"])
def test_names_that_are_not_hub_ids_are_refused_without_asking_the_hub(monkeypatch, name):
    monkeypatch.setattr(huggingface_hub, "model_info", _raises(AssertionError("the hub must not be asked")))
    with pytest.raises(UsageError, match="unknown model"):
        resolve_model(name)


def _cache_with(tmp_path, model_dir, repo: str, sha: str):
    """A hub cache holding `model_dir` as commit `sha` of `repo`, main pointing to it."""
    root = tmp_path / "hub"
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / sha
    shutil.copytree(model_dir, snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(sha)
    return root, snapshot


def test_offline_the_cache_pins_the_commit_and_hashes_the_weights(monkeypatch, tmp_path, tiny_model_dir):
    root, snapshot = _cache_with(tmp_path, tiny_model_dir, "tiny-bert", SHA)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(huggingface_hub, "model_info", _raises(errors.OfflineModeIsEnabled("offline")))
    ref = resolve_model("tiny-bert")
    assert ref.revision == SHA
    assert ref.sha256 == sha256_file(snapshot / "model.safetensors")
    assert ref.path == str(snapshot) and ref.model_id == "tiny-bert"


def test_offline_and_not_cached_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(huggingface_hub, "model_info", _raises(ConnectionError("no network")))
    with pytest.raises(UsageError, match="unknown model 'bert-base-uncased'.*in the local hub cache"):
        resolve_model("bert-base-uncased")


def test_the_record_of_a_hub_model_names_its_commit_and_weights(monkeypatch, tmp_path, tiny_model_dir):
    root, snapshot = _cache_with(tmp_path, tiny_model_dir, "tiny-bert", SHA)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(huggingface_hub, "model_info", _raises(errors.OfflineModeIsEnabled("offline")))
    rec = quick_run("tiny-bert", tmp_path / "results")
    assert rec.ok, rec.error
    model = rec.config.model
    assert (model.model_id, model.revision) == ("tiny-bert", SHA)
    assert model.sha256 == hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest()
    # The weights' identity is hashed, not where this machine keeps them.
    assert "path" not in rec.config.hash_payload()["model"]
