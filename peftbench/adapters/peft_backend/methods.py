"""peft's LoRA family, VeRA and (IA)³ with the native methods' own configs (same knobs, same meaning, so a native
row and its peft row differ only in whose code ran), and peft-only tuners with configs of their own.

Size knob per method (what `--budget` solves, against peft's own count): LoRA, DoRA, LoHa, LoKr: r; VeRA: r (the
shared rank); OFT: block_size; FourierFT: n_frequency. (IA)³ and LN tuning have none: unbudgeted rows."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from peftbench.adapters.base import ApplyPlan, TargetMatrix, block_index, find_targets, is_head_param
from peftbench.adapters.dora import DoraAdapter, DoraConfig
from peftbench.adapters.ia3 import IA3Config
from peftbench.adapters.lora import LoraAdapter, LoraConfig, max_rank, with_rank
from peftbench.adapters.peft_backend.adapter import PeftAdapter, exact_names
from peftbench.adapters.vera import MAX_RANK as VERA_MAX_RANK
from peftbench.adapters.vera import VeraConfig
from peftbench.errors import UsageError


def kind(name: str) -> str:
    """A module's path inside its block ('attention.self.key'), as TargetMatrix.kind."""
    return TargetMatrix(name, 0, 0).kind


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def ranks(cls: type, targets: list[TargetMatrix], base: Any) -> Sequence[int]:
    """knob_values of a rank: 1 up to the smallest target's full rank."""
    return range(1, max_rank(targets) + 1)


# --- the LoRA family, through the native configs ---------------------------------------------------------------


class PeftLoraAdapter(PeftAdapter):
    name = "peft-lora"
    display_name = "LoRA (peft)"
    summary = "LoRA as peft builds it (peft.LoraConfig), native lora's config"
    config_cls = LoraConfig
    peft_config_name = "LoraConfig"
    budget_knobs = ("r",)
    default_lr = LoraAdapter.default_lr
    # The native method whose config this one takes, and whose peft twin is the peft config built here.
    native: ClassVar[type[LoraAdapter]] = LoraAdapter

    @classmethod
    def peft_config(cls, config: LoraConfig, names: list[str], total_steps: int) -> Any:
        # The native method's twin is this exact peft config; one mapping of our fields onto peft's, not two.
        return cls.native.peft_twin(config, exact_names(names), None, total_steps).config

    knob_values = classmethod(ranks)

    @classmethod
    def with_knob(cls, base: LoraConfig, value: int, targets: list[TargetMatrix]) -> LoraConfig:
        return with_rank(base, value)


class PeftDoraAdapter(PeftLoraAdapter):
    name = "peft-dora"
    display_name = "DoRA (peft)"
    summary = "DoRA as peft builds it (peft.LoraConfig with use_dora), native dora's config"
    config_cls = DoraConfig
    default_lr = DoraAdapter.default_lr
    native = DoraAdapter


@dataclass(frozen=True)
class LoHaConfig:
    r: int = field(default=8, metadata={"help": "rank of each of the two Hadamard factors' low-rank products"})
    alpha: float = field(default=8.0, metadata={"help": "scaling numerator: s = alpha / r (peft's default 8)"})
    rank_dropout: float = field(default=0.0, metadata={"help": "dropout on the ranks of the update, per row"})
    module_dropout: float = field(default=0.0, metadata={"help": "probability of skipping the adapter per step"})


class PeftLoHaAdapter(PeftAdapter):
    """LoHa (Hyeon-Woo et al., 2022): ΔW = (B1 A1) ⊙ (B2 A2); adapter 2r(d_in + d_out) per matrix."""

    name = "peft-loha"
    display_name = "LoHa (peft)"
    summary = "LoHa: Hadamard product of two low-rank updates (peft.LoHaConfig)"
    config_cls = LoHaConfig
    peft_config_name = "LoHaConfig"
    budget_knobs = ("r",)
    default_lr = 1e-3  # LoRA's: the update is as small at init (one factor zero); not tuned

    @classmethod
    def peft_kwargs(cls, config: LoHaConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"r": config.r, "alpha": config.alpha, "rank_dropout": config.rank_dropout,
                "module_dropout": config.module_dropout}  # fmt: skip

    knob_values = classmethod(ranks)

    @classmethod
    def with_knob(cls, base: LoHaConfig, value: int, targets: list[TargetMatrix]) -> LoHaConfig:
        return with_rank(base, value)


@dataclass(frozen=True)
class LoKrConfig:
    r: int = field(default=8, metadata={"help": "rank of the second Kronecker factor (full when r >= its size/2)"})
    alpha: float = field(default=8.0, metadata={"help": "scaling numerator: s = alpha / r (peft's default 8)"})
    decompose_factor: int = field(
        default=2,
        metadata={
            "help": "side f of the first Kronecker factor (f x f, f dividing the widths; else peft splits near f). "
            "peft's -1 (a split near the square root) caps LoKr at ~40K parameters on MiniLM, below the budgets "
            "we compare at; with 2 the rank spans them"
        },
    )
    decompose_both: bool = field(default=False, metadata={"help": "low-rank first factor too"})
    rank_dropout: float = field(default=0.0, metadata={"help": "dropout on the ranks of the update"})
    module_dropout: float = field(default=0.0, metadata={"help": "probability of skipping the adapter per step"})


class PeftLoKrAdapter(PeftAdapter):
    """LoKr (Yeh et al., 2024): ΔW = W1 ⊗ (B2 A2), W1 f×f; adapter f² + r(d_out/f + d_in/f) per matrix (W2 full,
    (d_out/f)(d_in/f), once r reaches half its larger side)."""

    name = "peft-lokr"
    display_name = "LoKr (peft)"
    summary = "LoKr: Kronecker product of a small and a low-rank factor (peft.LoKrConfig)"
    config_cls = LoKrConfig
    peft_config_name = "LoKrConfig"
    budget_knobs = ("r",)
    default_lr = 1e-3  # as LoRA; not tuned

    @classmethod
    def peft_kwargs(cls, config: LoKrConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"r": config.r, "alpha": config.alpha, "decompose_factor": config.decompose_factor,
                "decompose_both": config.decompose_both, "rank_dropout": config.rank_dropout,
                "module_dropout": config.module_dropout}  # fmt: skip

    knob_values = classmethod(ranks)

    @classmethod
    def with_knob(cls, base: LoKrConfig, value: int, targets: list[TargetMatrix]) -> LoKrConfig:
        return with_rank(base, value)


# --- VeRA and (IA)³, through the native configs ----------------------------------------------------------------


class PeftVeraAdapter(PeftAdapter):
    name = "peft-vera"
    display_name = "VeRA (peft)"
    summary = "VeRA as peft builds it (peft.VeraConfig), native vera's config"
    config_cls = VeraConfig
    peft_config_name = "VeraConfig"
    budget_knobs = ("r",)
    count_by_shape = False  # the projections are sized by the widest layers
    default_lr = 4e-3  # native vera's

    @classmethod
    def peft_kwargs(cls, config: VeraConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"r": config.r, "d_initial": config.d_initial, "projection_prng_key": config.projection_seed,
                "vera_dropout": config.dropout}  # fmt: skip

    @classmethod
    def knob_values(cls, targets: list[TargetMatrix], base: VeraConfig) -> Sequence[int]:
        return range(1, VERA_MAX_RANK + 1)


class PeftIA3Adapter(PeftAdapter):
    name = "peft-ia3"
    display_name = "(IA)³ (peft)"
    summary = "(IA)³ as peft builds it (peft.IA3Config), native ia3's config"
    config_cls = IA3Config
    peft_config_name = "IA3Config"
    budgeted = False
    default_lr = 3e-3  # native ia3's

    def select(self, model: nn.Module, plan: ApplyPlan) -> list[str]:
        # As native ia3: among the targets, the Linears whose path inside the block is listed, not a suffix match.
        c = self.config
        wanted = (*c.scale_outputs, *c.scale_inputs)
        return [t.name for t in find_targets(model, plan.targets, plan.head_modules) if t.kind in wanted]

    @classmethod
    def peft_kwargs(cls, config: IA3Config, names: list[str], total_steps: int) -> dict[str, Any]:
        # The input-scaled Linears are peft's "feedforward" modules: it scales their input, not their output.
        inputs = [n for n in names if kind(n) in config.scale_inputs]
        return {"feedforward_modules": exact_names(inputs) if inputs else []}

    def apply(self, model: nn.Module, plan: ApplyPlan) -> nn.Module:
        c = self.config
        both = set(c.scale_outputs) & set(c.scale_inputs)
        if both:
            raise UsageError(f"(IA)³ scales a Linear's input or its output, not both: {sorted(both)} is in both lists")
        return super().apply(model, plan)


# --- peft-only tuners ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LNTuningConfig:
    layernorms: tuple[str, ...] = field(
        default=("attention.output.LayerNorm", "output.LayerNorm"),
        metadata={"help": "LayerNorms (path inside a block) whose weight and bias train; the embeddings' stays frozen"},
    )


class PeftLNTuningAdapter(PeftAdapter):
    """LN tuning (Zhao et al., 2024): only the blocks' LayerNorms (scale and shift) train; 2 x width per LayerNorm."""

    name = "peft-ln-tuning"
    display_name = "LN tuning (peft)"
    summary = "LN tuning: the blocks' LayerNorms train (peft.LNTuningConfig); unbudgeted"
    config_cls = LNTuningConfig
    peft_config_name = "LNTuningConfig"
    budgeted = False
    default_lr = 3e-3  # as (IA)³: a few vectors acting multiplicatively; not tuned

    def select(self, model: nn.Module, plan: ApplyPlan) -> list[str]:
        # The plan's targets are Linears; this method's are the LayerNorms inside the same numbered blocks.
        return [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) and block_index(n) is not None
                and not is_head_param(n, plan.head_modules) and kind(n) in self.config.layernorms]  # fmt: skip

    @classmethod
    def peft_kwargs(cls, config: LNTuningConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {}

    @classmethod
    def build_tuner(cls, model: nn.Module, names: list[str], config: Any, total_steps: int) -> nn.Module:
        with warnings.catch_warnings():
            # peft asks each target for Linear-style in/out features and warns on a LayerNorm, which needs none.
            warnings.filterwarnings("ignore", message="Unsupported layer type")
            return super().build_tuner(model, names, config, total_steps)


@dataclass(frozen=True)
class OFTConfig:
    block_size: int = field(
        default=32, metadata={"help": "side of each orthogonal block rotating a Linear's input (peft's oft_block_size)"}
    )
    coft: bool = field(default=False, metadata={"help": "constrained OFT: keep R within eps of the identity"})
    eps: float = field(default=6e-5, metadata={"help": "COFT's radius"})
    block_share: bool = field(default=False, metadata={"help": "one block shared by all blocks of a Linear"})
    cayley_neumann: bool = field(
        default=True,
        metadata={"help": "approximate the Cayley transform's inverse by a Neumann series (peft's default)"},
    )
    module_dropout: float = field(default=0.0, metadata={"help": "probability of dropping a block per step"})


class PeftOFTAdapter(PeftAdapter):
    """OFT (Qiu et al., 2023): W' = W R with R block-diagonal orthogonal (Cayley of a skew-symmetric block);
    adapter d_in (b - 1) / 2 per matrix for block size b. peft moves a block size that does not divide a Linear's
    input width to a divisor, per Linear: the search offers sizes dividing every width when there are any."""

    name = "peft-oft"
    display_name = "OFT (peft)"
    summary = "OFT: block-diagonal orthogonal rotation of each input (peft.OFTConfig)"
    config_cls = OFTConfig
    peft_config_name = "OFTConfig"
    budget_knobs = ("block_size",)
    default_lr = 1e-3  # not tuned

    @classmethod
    def peft_kwargs(cls, config: OFTConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"r": 0, "oft_block_size": config.block_size, "coft": config.coft, "eps": config.eps,
                "block_share": config.block_share, "use_cayley_neumann": config.cayley_neumann,
                "module_dropout": config.module_dropout}  # fmt: skip

    @classmethod
    def knob_values(cls, targets: list[TargetMatrix], base: OFTConfig) -> Sequence[int]:
        common = [b for b in divisors(math.gcd(*(t.d_in for t in targets))) if b > 1]
        if len(common) >= 2:
            return common
        # Widths with no common block size (coprime): every size that fits one of them, the others adjusted.
        return sorted({b for t in targets for b in divisors(t.d_in) if b > 1})


@dataclass(frozen=True)
class FourierFTConfig:
    n_frequency: int = field(default=1000, metadata={"help": "spectral coefficients learned per Linear"})
    scaling: float = field(default=150.0, metadata={"help": "scale of the inverse DFT's output (peft's default)"})
    random_loc_seed: int = field(default=777, metadata={"help": "seed of the frequencies' (shared) locations"})
    init_zero: bool = field(
        default=True,
        metadata={
            "help": "start the coefficients at zero, so the model is unchanged at initialisation (peft's "
            "init_weights=True); false draws them from N(0, 1) as peft's default does"
        },
    )


class PeftFourierFTAdapter(PeftAdapter):
    """FourierFT (Gao et al., ICML 2024): ΔW = scaling · Re(IDFT2(F)) with F sparse, n learned coefficients at
    random (seeded) frequencies; adapter n per matrix."""

    name = "peft-fourierft"
    display_name = "FourierFT (peft)"
    summary = "FourierFT: a few learned 2-D Fourier coefficients per Linear (peft.FourierFTConfig)"
    config_cls = FourierFTConfig
    peft_config_name = "FourierFTConfig"
    budget_knobs = ("n_frequency",)
    default_lr = 5e-3  # few coefficients, each spread over the whole matrix; not tuned

    @classmethod
    def peft_kwargs(cls, config: FourierFTConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        return {"n_frequency": config.n_frequency, "scaling": config.scaling,
                "random_loc_seed": config.random_loc_seed, "init_weights": config.init_zero}  # fmt: skip

    @classmethod
    def knob_values(cls, targets: list[TargetMatrix], base: FourierFTConfig) -> Sequence[int]:
        return range(1, min(t.d_in * t.d_out for t in targets) + 1)
