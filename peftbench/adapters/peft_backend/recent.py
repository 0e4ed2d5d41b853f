"""peft's most recent tuners for Linear layers (papers of 2024-2026, as peft cites them), each with the size knob the
budget search moves against peft's count: DEFT, PEANuT, PSOFT: r; PVeRA: r (shared, as VeRA's); TinyLoRA: u (the
trainable vector per module); UniLoRA: theta_d_length (the one vector every update is drawn from).

Learning rates are not tuned: LoRA's for the rank methods, VeRA's for the methods that train a few shared or
projected vectors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from peftbench.adapters.base import TargetMatrix, config_replace
from peftbench.adapters.peft_backend.adapter import PeftAdapter
from peftbench.adapters.peft_backend.methods import ranks
from peftbench.adapters.vera import MAX_RANK as VERA_MAX_RANK

# A cap on the per-module vector of TinyLoRA: its count grows without a natural ceiling, the cap keeps an
# unreachable budget from becoming an enormous projection; budgets above it fail with the nearest count.
MAX_VECTOR = 1 << 16


@dataclass(frozen=True)
class DeftConfig:
    r: int = field(default=8, metadata={"help": "rank of the projection P and the injection R"})
    decomposition: str = field(default="relu", metadata={"help": "projector from P: 'relu' or 'qr' (orthogonal)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})


class PeftDeftAdapter(PeftAdapter):
    """DEFT: W' = (I − P_proj) W + Q_P R, a low-rank projection out of W and an injection into its place; adapter
    r (d_in + d_out) per matrix."""

    name = "peft-deft"
    display_name = "DEFT (peft)"
    summary = "DEFT: project a low-rank subspace out of W and inject a learned one (peft.DeftConfig)"
    config_cls = DeftConfig
    peft_config_name = "DeftConfig"
    budget_knobs = ("r",)
    default_lr = 1e-3

    @classmethod
    def peft_kwargs(cls, config: DeftConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"r": config.r, "decomposition_method": config.decomposition, "deft_dropout": config.dropout}

    knob_values = classmethod(ranks)


@dataclass(frozen=True)
class PeanutConfig:
    r: int = field(default=32, metadata={"help": "hidden width of the small network that maps W to its update"})
    depth: int = field(default=0, metadata={"help": "hidden layers on each side of that network"})
    act_fn: str = field(default="relu", metadata={"help": "its activation"})
    scaling: float = field(default=1.0, metadata={"help": "multiplier of the update"})


class PeftPeanutAdapter(PeftAdapter):
    """PEANuT: the update is a small non-linear network of the frozen weight itself, r wide; adapter about
    r (d_in + d_out) per matrix at depth 0."""

    name = "peft-peanut"
    display_name = "PEANuT (peft)"
    summary = "PEANuT: a small non-linear network of the weight gives its update (peft.PeanutConfig)"
    config_cls = PeanutConfig
    peft_config_name = "PeanutConfig"
    budget_knobs = ("r",)
    default_lr = 1e-3

    @classmethod
    def peft_kwargs(cls, config: PeanutConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"r": config.r, "depth": config.depth, "act_fn": config.act_fn, "scaling": config.scaling}

    knob_values = classmethod(ranks)


@dataclass(frozen=True)
class PsoftConfig:
    r: int = field(default=32, metadata={"help": "side of the orthogonal r x r transformation trained per Linear"})
    alpha: float = field(default=32.0, metadata={"help": "scaling numerator (peft's psoft_alpha)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})


class PeftPsoftAdapter(PeftAdapter):
    """PSOFT: ΔW = B (R − I) A with A, B from W's principal subspace (SVD, frozen) and R an r×r orthogonal
    transformation (trained, with two magnitude vectors)."""

    name = "peft-psoft"
    display_name = "PSOFT (peft)"
    summary = "PSOFT: an orthogonal transformation inside W's principal subspace (peft.PsoftConfig)"
    config_cls = PsoftConfig
    peft_config_name = "PsoftConfig"
    budget_knobs = ("r",)
    default_lr = 1e-3

    @classmethod
    def peft_kwargs(cls, config: PsoftConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"r": config.r, "psoft_alpha": config.alpha, "psoft_dropout": config.dropout}

    knob_values = classmethod(ranks)


@dataclass(frozen=True)
class PveraConfig:
    r: int = field(default=256, metadata={"help": "rank of the shared random projections (VeRA's r)"})
    d_initial: float = field(default=0.1, metadata={"help": "initial value of the scaling vector d"})
    projection_seed: int = field(default=0, metadata={"help": "seed of the shared projections"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})


class PeftPveraAdapter(PeftAdapter):
    """PVeRA: VeRA with a probabilistic latent (a sampled, learned-variance code in training, its mean at
    inference); adapter about r + d_out per matrix as VeRA's."""

    name = "peft-pvera"
    display_name = "PVeRA (peft)"
    summary = "PVeRA: VeRA with a probabilistic latent code (peft.PveraConfig)"
    config_cls = PveraConfig
    peft_config_name = "PveraConfig"
    budget_knobs = ("r",)
    default_lr = 4e-3
    count_by_shape = False  # the projections are sized by the widest layers

    @classmethod
    def peft_kwargs(cls, config: PveraConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"r": config.r, "d_initial": config.d_initial, "projection_prng_key": config.projection_seed,
                "pvera_dropout": config.dropout}  # fmt: skip

    @classmethod
    def knob_values(cls, targets: list[TargetMatrix], base: PveraConfig) -> Sequence[int]:
        return range(1, VERA_MAX_RANK + 1)


@dataclass(frozen=True)
class TinyLoraConfig:
    u: int = field(default=64, metadata={"help": "length of the trainable vector of each module"})
    r: int = field(default=2, metadata={"help": "rank of W's frozen SVD the vector acts in (the paper's 2)"})
    projection_seed: int = field(default=42, metadata={"help": "seed of the fixed random projections"})


class PeftTinyLoraAdapter(PeftAdapter):
    """TinyLoRA: W's top-r SVD factors, frozen, adapted through a tiny trainable vector of length u per module
    projected by fixed random tensors; adapter u per matrix."""

    name = "peft-tinylora"
    display_name = "TinyLoRA (peft)"
    summary = "TinyLoRA: a tiny vector per module, projected into W's top SVD directions (peft.TinyLoraConfig)"
    config_cls = TinyLoraConfig
    peft_config_name = "TinyLoraConfig"
    budget_knobs = ("u",)
    default_lr = 4e-3
    count_by_shape = False  # the projections are shared state of the tuner

    @classmethod
    def peft_kwargs(cls, config: TinyLoraConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"u": config.u, "r": config.r, "projection_seed": config.projection_seed}

    @classmethod
    def knob_values(cls, targets: list[TargetMatrix], base: TinyLoraConfig) -> Sequence[int]:
        return range(1, MAX_VECTOR + 1)


@dataclass(frozen=True)
class UniLoraConfig:
    theta_d_length: int = field(default=256, metadata={"help": "length of the one trainable vector of the model"})
    r: int = field(default=4, metadata={"help": "rank of the LoRA factors whose entries index into that vector"})
    proj_seed: int = field(default=42, metadata={"help": "seed of the fixed index assignment"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})


class PeftUniLoraAdapter(PeftAdapter):
    """Uni-LoRA: every entry of every rank-r LoRA factor is one entry of a single trainable vector θ_d (a fixed
    random assignment); adapter theta_d_length for the whole model. With a budget, r grows where θ_d would have more
    entries than the factors can draw on."""

    name = "peft-unilora"
    display_name = "Uni-LoRA (peft)"
    summary = "Uni-LoRA: all LoRA factors drawn from one trainable vector (peft.UniLoraConfig)"
    config_cls = UniLoraConfig
    peft_config_name = "UniLoraConfig"
    budget_knobs = ("theta_d_length", "r")
    default_lr = 4e-3
    count_by_shape = False  # one vector for the whole model

    @classmethod
    def peft_kwargs(cls, config: UniLoraConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"theta_d_length": config.theta_d_length, "r": config.r, "proj_seed": config.proj_seed,
                "unilora_dropout": config.dropout}  # fmt: skip

    @classmethod
    def knob_values(cls, targets: list[TargetMatrix], base: UniLoraConfig) -> Sequence[int]:
        # Up to as many entries as rank-64 factors have: peft assigns every factor entry an index when it builds
        # the layers, which for larger ranks makes each count of the search take seconds.
        return range(1, 64 * sum(t.d_in + t.d_out for t in targets) + 1)

    @classmethod
    def with_knob(cls, base: UniLoraConfig, value: int, targets: list[TargetMatrix]) -> UniLoraConfig:
        per_rank = sum(t.d_in + t.d_out for t in targets)
        return config_replace(base, theta_d_length=value, r=max(base.r, math.ceil(value / per_rank)))
