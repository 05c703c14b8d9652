"""Cost of a packed row for VideoDiT: training FLOPs, activation memory, and the row budget a memory
budget allows; plus the per-step figures a trainer logs (packing efficiency, tokens/s, estimated MFU).

FLOPs (forward; training counts `train_factor` = 3 forwards: the backward is about two) of a sample with
L video tokens and L_text text tokens, D = hidden_size, r = mlp_ratio, per block unless said:
- linear in L: 2 * (6 + 2r) D^2 per token (qkv 3D^2, out D^2, cross-attention q and out 2D^2, MLP 2r D^2),
  plus the patch embedding and output head, 4 D * D_in per token once;
- quadratic in L: self-attention, 4 D per (query, key) pair of the SAME sample (QK^T and AV), so a row's
  cost depends on how its tokens divide into samples, not only on their number;
- cross-attention: 4 D per (video token, text token) pair; text: 4 D^2 per text token (K, V) and the
  text projection 2 (text_dim D + D^2) once;
- per sample: its adaLN modulation (12 D^2 per block, 4 D^2 for the head) and timestep MLP.
These are all the matmuls of the forward: tests/test_cost_model.py checks the sum against torch's FLOP
counter.

Activation memory is what autograd keeps for the backward, per video token and block: about 26 + 2r
elements of width D in the model's dtype (inputs of the linears, the attention's q, k, v and output,
the modulated and gated branches) plus 8 in fp32 (the norms, which run in fp32). Counted from the
tensors a DiT block saves; tests/test_cost_model.py checks it against autograd's own saved tensors.
Attention never materialises L x L scores (the backends are all fused or per-sample), so activations
are linear in L.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from videodit.model import DiTConfig

Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class CostModel:
    linear_flops: float  # forward FLOPs per video token of every matmul
    attention_flops: float  # forward FLOPs per (query, key) pair within one sample, all blocks
    cross_flops: float  # forward FLOPs per (video token, text token) pair of one sample, all blocks
    text_flops: float  # forward FLOPs per text token (projection, cross-attention keys and values)
    per_sample_flops: float  # forward FLOPs per sample (modulation, timestep embedding)
    activation_bytes: float  # bytes kept for the backward per video token (all blocks)
    train_factor: float = 3.0  # training FLOPs per forward FLOP (backward ~ 2 forwards)

    def __post_init__(self):
        for name in ("linear_flops", "attention_flops", "cross_flops", "text_flops", "per_sample_flops",
                     "activation_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"CostModel.{name} must be >= 0, got {getattr(self, name)}")
        if self.train_factor < 1:
            raise ValueError(f"CostModel.train_factor must be >= 1, got {self.train_factor}")

    def forward_flops(self, length: int, text_length: int = 0) -> float:
        """Forward FLOPs of one sample of `length` video and `text_length` text tokens."""
        return (self.linear_flops * length + self.attention_flops * length * length
                + self.cross_flops * length * text_length + self.text_flops * text_length
                + self.per_sample_flops)

    def sample_flops(self, length: int, text_length: int = 0) -> float:
        """Training (forward + backward) FLOPs of one sample."""
        return self.train_factor * self.forward_flops(length, text_length)

    def row_flops(self, lengths: Sequence[int], text_lengths: Sequence[int] | None = None) -> float:
        """Training FLOPs of a row of samples with these video (and text) token counts."""
        text_lengths = text_lengths if text_lengths is not None else [0] * len(lengths)
        if len(text_lengths) != len(lengths):
            raise ValueError(f"got {len(lengths)} video lengths but {len(text_lengths)} text lengths")
        return sum(self.sample_flops(n, m) for n, m in zip(lengths, text_lengths))

    def row_activation_bytes(self, tokens: int) -> float:
        """Bytes of activations kept for the backward by a row of `tokens` video tokens."""
        return self.activation_bytes * tokens


def _bytes(precision: Precision) -> int:
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return 4 if precision == "fp32" else 2


def cost_model(cfg: DiTConfig, precision: Precision = "bf16") -> CostModel:
    """The cost model of a VideoDiT built from `cfg`, trained in `precision` (see module doc)."""
    D, depth, r = cfg.hidden_size, cfg.depth, cfg.mlp_ratio
    per_block = 2 * (6 + 2 * r) * D * D
    return CostModel(
        linear_flops=depth * per_block + 4 * D * cfg.patch_dim,
        attention_flops=depth * 4 * D,
        cross_flops=depth * 4 * D,
        text_flops=depth * 4 * D * D + 2 * (cfg.text_dim * D + D * D),
        per_sample_flops=depth * 12 * D * D + 4 * D * D + 2 * (cfg.frequency_embedding_size * D + D * D),
        activation_bytes=depth * D * ((26 + 2 * r) * _bytes(precision) + 8 * 4),
    )


def model_state_bytes(num_params: int, precision: Precision, zero_stage: int, shards: int) -> float:
    """Bytes per rank of weights, gradients and AdamW state, with ZeRO partitioning over `shards` ranks
    (DeepSpeed shards over data- and sequence-parallel ranks alike).

    Per parameter: weights 4 (fp32) or 2 + a 4-byte fp32 master copy (bf16); gradients 4 or 2; two AdamW
    moments 8. Stage 1 partitions the optimizer state (moments and master copy), stage 2 also the
    gradients, stage 3 also the weights."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    b = _bytes(precision)
    weights, grads, optim = b, b, 8 + (4 if precision == "bf16" else 0)
    optim /= shards if zero_stage >= 1 else 1
    grads /= shards if zero_stage >= 2 else 1
    weights /= shards if zero_stage >= 3 else 1
    return num_params * (weights + grads + optim)


def row_tokens_for_memory(memory_budget_gb: float, cost: CostModel, num_params: int,
                          precision: Precision = "bf16", zero_stage: int = 2, data_parallel: int = 1,
                          sequence_parallel: int = 1, headroom: float = 0.2) -> int:
    """Token budget of one packed row (across its `sequence_parallel` ranks) that fits one rank's
    `memory_budget_gb` (GiB): the budget less `headroom` (a fraction, for transient buffers: attention
    workspaces, all-to-all buffers, gradients in flight), less the model state, spent on activations.
    ValueError when the model state alone does not fit."""
    if memory_budget_gb <= 0:
        raise ValueError(f"memory budget must be > 0 GiB, got {memory_budget_gb}")
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom must be in [0, 1), got {headroom}")
    if data_parallel < 1 or sequence_parallel < 1:
        raise ValueError(f"data_parallel and sequence_parallel must be >= 1, got {data_parallel}, "
                         f"{sequence_parallel}")
    usable = memory_budget_gb * 2**30 * (1 - headroom)
    state = model_state_bytes(num_params, precision, zero_stage, data_parallel * sequence_parallel)
    if state >= usable or cost.activation_bytes <= 0:
        raise ValueError(
            f"memory budget {memory_budget_gb} GiB ({usable / 2**30:.2f} GiB after {headroom:.0%} headroom) "
            f"does not cover the model state of {state / 2**30:.2f} GiB per rank ({num_params} parameters, "
            f"{precision}, ZeRO stage {zero_stage} over {data_parallel * sequence_parallel} ranks); "
            f"raise the budget, the ZeRO stage or the number of ranks"
        )
    return int((usable - state) // cost.activation_bytes) * sequence_parallel


def packing_efficiency(lengths: Sequence[int], row_tokens: int) -> float:
    """Fraction of a row's token budget filled with real tokens."""
    if row_tokens < 1:
        raise ValueError(f"row_tokens must be >= 1, got {row_tokens}")
    return sum(lengths) / row_tokens


def tokens_per_second(tokens: int, seconds: float) -> float:
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return tokens / seconds


def estimated_mfu(flops: float, seconds: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: the cost model's training FLOPs done per second over the hardware's peak
    (FLOP/s, e.g. the matmul peak bench.gpu measures; per rank if `flops` is one rank's)."""
    if seconds <= 0 or peak_flops <= 0:
        raise ValueError(f"seconds and peak_flops must be > 0, got {seconds}, {peak_flops}")
    return flops / seconds / peak_flops


def step_metrics(rows: Sequence[Sequence[int]], row_tokens: int, seconds: float, cost: CostModel,
                 peak_flops: float | None = None,
                 text_rows: Sequence[Sequence[int]] | None = None) -> dict[str, float]:
    """Figures for one optimizer step of this rank: `rows` the video token counts of the samples of each
    row it trained (micro-steps), `seconds` the step's wall time -> {packing_efficiency, tokens_per_s,
    tflops, mfu (with `peak_flops`)}."""
    if not rows:
        raise ValueError("step_metrics needs at least one row")
    text_rows = text_rows if text_rows is not None else [None] * len(rows)
    tokens = sum(sum(r) for r in rows)
    flops = sum(cost.row_flops(r, t) for r, t in zip(rows, text_rows))
    out = {
        "packing_efficiency": tokens / (row_tokens * len(rows)),
        "tokens_per_s": tokens_per_second(tokens, seconds),
        "tflops": flops / seconds / 1e12,
    }
    if peak_flops is not None:
        out["mfu"] = estimated_mfu(flops, seconds, peak_flops)
    return out


def sequence_parallel_needed(tokens: int, rank_tokens: int) -> int:
    """Smallest number of sequence-parallel ranks whose rows hold a sample of `tokens` tokens."""
    return max(1, math.ceil(tokens / rank_tokens))
