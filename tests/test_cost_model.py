import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from videodit.cost_model import (
    CostModel,
    cost_model,
    estimated_mfu,
    model_state_bytes,
    packing_efficiency,
    row_tokens_for_memory,
    sequence_parallel_needed,
    step_metrics,
    tokens_per_second,
)
from videodit.model import DiTConfig, VideoDiT
from videodit.packing import pack

TEXT_DIM = 12


def tiny_config(**kw) -> DiTConfig:
    return DiTConfig(**{**dict(in_channels=4, text_dim=TEXT_DIM, hidden_size=48, depth=2, num_heads=4,
                               attention="sdpa"), **kw})


def row(shapes, text_lengths):
    latents = [torch.randn(4, *s) for s in shapes]
    return pack(latents, [torch.randn(n, TEXT_DIM) for n in text_lengths], (1, 2, 2))


@pytest.mark.parametrize("mlp_ratio", [4.0, 2.0])
def test_forward_flops_equal_torch_flop_count(mlp_ratio):
    """Every matmul of the forward, attention included (the math SDPA kernel runs it as counted bmm's)."""
    cfg = tiny_config(mlp_ratio=mlp_ratio)
    model, cost = VideoDiT(cfg), cost_model(cfg)
    text_lengths = [5, 3, 7]
    packed = row([(3, 6, 8), (1, 4, 4), (2, 8, 8)], text_lengths)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model.forward_packed(packed, torch.rand(3))
    estimate = sum(cost.forward_flops(n, m) for n, m in zip(packed.seqlens, text_lengths))
    assert estimate == pytest.approx(counter.get_total_flops(), rel=1e-6)
    assert cost.row_flops(packed.seqlens, text_lengths) == pytest.approx(3 * estimate)


def saved_bytes(model, packed) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of one forward."""
    storages = {}

    def keep(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model.forward_packed(packed, torch.rand(packed.num_samples))
    return sum(storages.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activation_bytes_match_saved_tensors(precision):
    """Per video token: the growth of autograd's saved bytes between a short and a long row (the weights,
    also saved by the linears, cancel)."""
    cfg = tiny_config(hidden_size=128)
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    model = VideoDiT(cfg).to(dtype)
    short = row([(1, 2, 2 * 128)], [6]).to(dtype=dtype)  # 128 tokens
    long = row([(1, 2, 2 * 640)], [6]).to(dtype=dtype)  # 640 tokens
    per_token = (saved_bytes(model, long) - saved_bytes(model, short)) / 512
    assert cost_model(cfg, precision).activation_bytes == pytest.approx(per_token, rel=0.1)


def test_cost_grows_with_length_and_quadratically():
    cost = cost_model(DiTConfig(hidden_size=256, depth=4, num_heads=4))
    flops = [cost.sample_flops(n, 10) for n in (1, 16, 256, 4096, 65536)]
    assert all(a < b for a, b in zip(flops, flops[1:]))
    assert cost.sample_flops(8192) > 2.5 * cost.sample_flops(4096)  # attention dominates long samples
    # the same tokens cost more as one sample than as many: why rows are filled by cost, not tokens
    assert cost.row_flops([4096]) > 1.5 * cost.row_flops([256] * 16)


def test_model_state_bytes_by_zero_stage():
    n = 1000
    assert model_state_bytes(n, "fp32", 0, 4) == 16 * n  # weights 4 + grads 4 + moments 8
    assert model_state_bytes(n, "fp32", 1, 4) == (4 + 4 + 2) * n
    assert model_state_bytes(n, "fp32", 2, 4) == (4 + 1 + 2) * n
    assert model_state_bytes(n, "fp32", 3, 4) == (1 + 1 + 2) * n
    assert model_state_bytes(n, "bf16", 2, 4) == (2 + 0.5 + 3) * n  # + the fp32 master copy
    with pytest.raises(ValueError, match="zero_stage must be 0, 1, 2 or 3, got 4"):
        model_state_bytes(n, "fp32", 4, 1)


def test_row_tokens_for_memory():
    cost = CostModel(linear_flops=1, attention_flops=1, cross_flops=0, text_flops=0, per_sample_flops=0,
                     activation_bytes=1024)
    params = 2**20  # 16 MiB of fp32 state at ZeRO-0
    # 1 GiB, no headroom: (1 GiB - 16 MiB) / 1 KiB per token
    assert row_tokens_for_memory(1.0, cost, params, "fp32", 0, headroom=0.0) == (2**30 - 16 * 2**20) // 1024
    budgets = [row_tokens_for_memory(gb, cost, params, "fp32", 2) for gb in (0.5, 1, 2, 8)]
    assert all(a < b for a, b in zip(budgets, budgets[1:]))
    one = row_tokens_for_memory(1.0, cost, params, "fp32", 2, data_parallel=2)
    two = row_tokens_for_memory(1.0, cost, params, "fp32", 2, data_parallel=2, sequence_parallel=2)
    assert two >= 2 * one  # two ranks' activations, and the state sharded over more ranks
    assert row_tokens_for_memory(1.0, cost, params, "fp32", 3, data_parallel=8) > one
    with pytest.raises(ValueError, match=r"memory budget 0.01 GiB .* does not cover the model state"):
        row_tokens_for_memory(0.01, cost, params, "fp32", 0)
    with pytest.raises(ValueError, match="memory budget must be > 0 GiB, got 0"):
        row_tokens_for_memory(0, cost, params)


def test_real_model_budget_is_plausible():
    """DiT-XL width at bf16 on an 80 GiB GPU holds tens of thousands of tokens per rank."""
    cfg = DiTConfig(hidden_size=1152, depth=28, num_heads=16)
    with torch.device("meta"):  # count the parameters without allocating them
        params = sum(p.numel() for p in VideoDiT(cfg).parameters())
    tokens = row_tokens_for_memory(80, cost_model(cfg, "bf16"), params)
    assert 10_000 < tokens < 200_000


def test_step_figures():
    assert packing_efficiency([300, 200], 1000) == 0.5
    assert tokens_per_second(500, 2.0) == 250
    assert estimated_mfu(4e12, 2.0, 1e13) == pytest.approx(0.2)
    cost = CostModel(linear_flops=10, attention_flops=1, cross_flops=0, text_flops=0, per_sample_flops=0,
                     activation_bytes=1)
    m = step_metrics([[10, 20], [30]], row_tokens=40, seconds=2.0, cost=cost, peak_flops=1e4)
    flops = 3 * ((100 + 100) + (200 + 400) + (300 + 900))
    assert m == pytest.approx({"packing_efficiency": 60 / 80, "tokens_per_s": 30, "tflops": flops / 2 / 1e12,
                               "mfu": flops / 2 / 1e4})
    with pytest.raises(ValueError, match="seconds must be > 0"):
        tokens_per_second(1, 0)
    assert sequence_parallel_needed(1500, 1024) == 2 and sequence_parallel_needed(10, 1024) == 1
