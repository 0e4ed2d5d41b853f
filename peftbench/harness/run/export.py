"""`--save-adapter`: the trained adapter and head beside the run's record. Methods peft can load (the adapter's
`peft_export`) are written in peft's format, a directory `PeftModel.from_pretrained` reads onto the untouched
base model; the others as one safetensors file of the trainable parameters, peftbench's own layout. Both are
written atomically, and neither needs peft installed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from torch import nn

from peftbench.adapters.base import Adapter
from peftbench.adapters.peft_format import PeftExport
from peftbench.config import RunConfig
from peftbench.records import adapter_weights_path, atomic_dir, atomic_target, peft_adapter_dir

log = logging.getLogger(__name__)

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"


def save_adapter(adapter: Adapter, model: nn.Module, record_file: Path, cfg: RunConfig) -> Path:
    """Write the run's adapter and head next to `record_file`; returns the file or directory written."""
    export = adapter.peft_export(model)
    if export is None:
        return save_trainable(model, adapter_weights_path(record_file), cfg)
    return save_peft(export, peft_adapter_dir(record_file), cfg)


def save_peft(export: PeftExport, target: Path, cfg: RunConfig) -> Path:
    from safetensors.torch import save_file

    # Which base model to load it onto: the run's, by hub id and revision (a local path means nothing elsewhere).
    config = {**export.config, "base_model_name_or_path": cfg.model.model_id, "revision": cfg.model.revision}
    meta = {"format": "pt", "config_hash": cfg.config_hash, "task": cfg.task, "method": cfg.method}
    with atomic_dir(target) as tmp:
        (tmp / PEFT_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(export.tensors, str(tmp / PEFT_WEIGHTS_NAME), metadata=meta)
    log.debug("%s: adapter written in peft's format to %s", cfg.method, target)
    return target


def save_trainable(model: nn.Module, target: Path, cfg: RunConfig) -> Path:
    """The parameters training changed, in safetensors (no pickle: loading it cannot run code)."""
    from safetensors.torch import save_file

    # Copies: safetensors refuses tensors that share storage, and the file must not alias live weights.
    state = {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}
    meta = {"config_hash": cfg.config_hash, "task": cfg.task, "method": cfg.method, "format": "peftbench-trainable"}
    with atomic_target(target) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return target
