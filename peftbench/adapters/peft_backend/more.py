"""More of peft's tuners for Linear layers, each with a size knob the budget search moves (against peft's count):
HRA and MiSS: r (even: their identity initialisation pairs the r components); SHiRA, DeLoRA, HiRA: r; WaveFT:
n_frequency; RandLoRA: r, the rank of its shared random bases, which trains more parameters as it shrinks.

Learning rates are not tuned: LoRA's for the rank methods, FourierFT's for WaveFT's few coefficients, VeRA's for
RandLoRA's scaling vectors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from peftbench.adapters.base import TargetMatrix
from peftbench.adapters.lora import max_rank
from peftbench.adapters.peft_backend.adapter import PeftAdapter
from peftbench.adapters.peft_backend.methods import ranks


def even_ranks(cls: type, targets: list[TargetMatrix], base: Any) -> Sequence[int]:
    return range(2, max_rank(targets) + 1, 2)


# --- orthogonal and shard methods ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HRAConfig:
    r: int = field(default=8, metadata={"help": "Householder reflections per Linear (even: they start in pairs)"})
    apply_gs: bool = field(default=False, metadata={"help": "Gram-Schmidt-orthogonalise the reflection vectors"})


class PeftHRAAdapter(PeftAdapter):
    """HRA (Yuan et al., NeurIPS 2024): W' = W H_1 ... H_r, a chain of r Householder reflections of the input;
    adapter r · d_in per matrix."""

    name = "peft-hra"
    display_name = "HRA (peft)"
    summary = "HRA: a chain of Householder reflections of each input (peft.HRAConfig)"
    config_cls = HRAConfig
    peft_config_name = "HRAConfig"
    budget_knobs = ("r",)
    default_lr = 1e-3

    @classmethod
    def peft_kwargs(cls, config: HRAConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"r": config.r, "apply_GS": config.apply_gs}

    knob_values = classmethod(even_ranks)


@dataclass(frozen=True)
class MissConfig:
    r: int = field(default=8, metadata={"help": "shard size along the input (even: the default init pairs them)"})
    mini_r: int = field(default=1, metadata={"help": "shard size along the output"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})


class PeftMissAdapter(PeftAdapter):
    """MiSS (Kang et al., 2024, formerly Bone): one shared shard, r wide, added to every block of W; adapter
    r · d_out / mini_r per matrix."""

    name = "peft-miss"
    display_name = "MiSS (peft)"
    summary = "MiSS: a shared matrix shard added to every block of the weight (peft.MissConfig)"
    config_cls = MissConfig
    peft_config_name = "MissConfig"
    budget_knobs = ("r",)
    default_lr = 1e-3

    @classmethod
    def peft_kwargs(cls, config: MissConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"r": config.r, "mini_r": config.mini_r, "miss_dropout": config.dropout}

    knob_values = classmethod(even_ranks)


# --- LoRA-sized high-rank and bounded updates ------------------------------------------------------------------


@dataclass(frozen=True)
class ShiraConfig:
    r: int = field(default=8, metadata={"help": "r (d_in + d_out) trainable entries of W per Linear (LoRA's count)"})
    mask_type: str = field(default="random", metadata={"help": "how the sparse entries are chosen (peft's mask)"})
    mask_seed: int = field(default=0, metadata={"help": "seed of the random mask (peft's default draws a new one)"})


class PeftShiraAdapter(PeftAdapter):
    """SHiRA (Bhardwaj et al., NeurIPS 2024): a fixed sparse subset of W's entries trains, as many as LoRA at rank r
    has parameters, r (d_in + d_out) per matrix; the update is high-rank."""

    name = "peft-shira"
    display_name = "SHiRA (peft)"
    summary = "SHiRA: a sparse set of the weights' own entries trains (peft.ShiraConfig)"
    config_cls = ShiraConfig
    peft_config_name = "ShiraConfig"
    budget_knobs = ("r",)
    default_lr = 1e-3
    count_device = "cpu"  # the mask is built with nonzero(), which the meta device cannot run

    @classmethod
    def peft_kwargs(cls, config: ShiraConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"r": config.r, "mask_type": config.mask_type, "random_seed": config.mask_seed}

    @classmethod
    def knob_values(cls, targets: list[TargetMatrix], base: ShiraConfig) -> Sequence[int]:
        # peft refuses more sparse entries than the matrix has: r (d_in + d_out) <= d_in d_out.
        return range(1, min(t.d_in * t.d_out // (t.d_in + t.d_out) for t in targets) + 1)


@dataclass(frozen=True)
class DeloraConfig:
    r: int = field(default=8, metadata={"help": "rank of the normalised update"})
    delora_lambda: float = field(default=15.0, metadata={"help": "initial bound on the update's norm (learned)"})
    module_dropout: float = field(default=0.0, metadata={"help": "probability of skipping the adapter per step"})


class PeftDeloraAdapter(PeftAdapter):
    """DeLoRA (Bini et al., ICLR 2025): a rank-r update normalised per rank and scaled by a learned bound λ, which
    decouples its direction from its strength; adapter r (d_in + d_out) + 1 per matrix."""

    name = "peft-delora"
    display_name = "DeLoRA (peft)"
    summary = "DeLoRA: a normalised low-rank update with a learned norm bound (peft.DeloraConfig)"
    config_cls = DeloraConfig
    peft_config_name = "DeloraConfig"
    budget_knobs = ("r",)
    default_lr = 1e-3

    @classmethod
    def peft_kwargs(cls, config: DeloraConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"r": config.r, "delora_lambda": config.delora_lambda, "module_dropout": config.module_dropout}

    knob_values = classmethod(ranks)


@dataclass(frozen=True)
class HiraConfig:
    r: int = field(default=8, metadata={"help": "rank of the factor multiplied elementwise with W"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})


class PeftHiraAdapter(PeftAdapter):
    """HiRA (Huang et al., ICLR 2025): ΔW = W ⊙ (B A), a high-rank update from a rank-r factor; adapter
    r (d_in + d_out) per matrix."""

    name = "peft-hira"
    display_name = "HiRA (peft)"
    summary = "HiRA: the weight times a low-rank factor, elementwise (peft.HiraConfig)"
    config_cls = HiraConfig
    peft_config_name = "HiraConfig"
    budget_knobs = ("r",)
    default_lr = 1e-3

    @classmethod
    def peft_kwargs(cls, config: HiraConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"r": config.r, "hira_dropout": config.dropout}

    knob_values = classmethod(ranks)


# --- a spectrum, and shared random bases ----------------------------------------------------------------------


@dataclass(frozen=True)
class WaveFTConfig:
    n_frequency: int = field(
        default=1000, metadata={"help": "wavelet coefficients learned per Linear (FourierFT's default; peft's 2592)"}
    )
    scaling: float = field(default=25.0, metadata={"help": "scale of the inverse wavelet transform's output"})
    wavelet_family: str = field(default="db1", metadata={"help": "wavelet of the transform (peft's default db1)"})
    random_loc_seed: int = field(default=777, metadata={"help": "seed of the coefficients' locations"})


class PeftWaveFTAdapter(PeftAdapter):
    """WaveFT (Bilican et al., 2025): ΔW = scaling · IDWT(C) with C sparse, n learned wavelet coefficients at
    random (seeded) places; adapter n per matrix, zero at initialisation."""

    name = "peft-waveft"
    display_name = "WaveFT (peft)"
    summary = "WaveFT: a few learned wavelet coefficients per Linear (peft.WaveFTConfig)"
    config_cls = WaveFTConfig
    peft_config_name = "WaveFTConfig"
    budget_knobs = ("n_frequency",)
    default_lr = 5e-3

    @classmethod
    def peft_kwargs(cls, config: WaveFTConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"n_frequency": config.n_frequency, "scaling": config.scaling,
                "wavelet_family": config.wavelet_family, "random_loc_seed": config.random_loc_seed}  # fmt: skip

    @classmethod
    def knob_values(cls, targets: list[TargetMatrix], base: WaveFTConfig) -> Sequence[int]:
        return range(1, min(t.d_in * t.d_out for t in targets) + 1)


@dataclass(frozen=True)
class RandLoraConfig:
    r: int = field(
        default=32, metadata={"help": "rank of each shared random basis; smaller r means more bases, more parameters"}
    )
    alpha: float = field(default=640.0, metadata={"help": "scaling numerator (peft's randlora_alpha)"})
    projection_seed: int = field(default=0, metadata={"help": "seed of the shared random bases"})
    sparse: bool = field(default=False, metadata={"help": "sparse ternary bases instead of dense ones"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})


class PeftRandLoraAdapter(PeftAdapter):
    """RandLoRA (Albert et al., ICLR 2025): a full-rank update from frozen random rank-r bases shared by all layers,
    each basis scaled by trained diagonal matrices; fewer, larger bases (higher r) train fewer parameters."""

    name = "peft-randlora"
    display_name = "RandLoRA (peft)"
    summary = "RandLoRA: full-rank updates from shared random bases, scaled per layer (peft.RandLoraConfig)"
    config_cls = RandLoraConfig
    peft_config_name = "RandLoraConfig"
    budget_knobs = ("r",)
    default_lr = 4e-3
    count_by_shape = False  # the bases are sized by the widest layers

    @classmethod
    def peft_kwargs(cls, config: RandLoraConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"r": config.r, "randlora_alpha": config.alpha, "projection_prng_key": config.projection_seed,
                "sparse": config.sparse, "randlora_dropout": config.dropout}  # fmt: skip

    @classmethod
    def knob_values(cls, targets: list[TargetMatrix], base: RandLoraConfig) -> Sequence[int]:
        # Descending, so the counts ascend as the search expects.
        return range(max_rank(targets), 0, -1)
