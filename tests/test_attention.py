import pytest
import torch

from videodit.attention import attention, available_backends, resolve_backend


def _dense_reference(q, k, v, cu_q, cu_k):
    """Full attention over the whole packed sequence with a block-diagonal (same segment) mask."""
    seg_q = torch.repeat_interleave(torch.arange(len(cu_q) - 1), torch.diff(cu_q).long())
    seg_k = torch.repeat_interleave(torch.arange(len(cu_k) - 1), torch.diff(cu_k).long())
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(seg_q[None, :, None] != seg_k[None, None, :], float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v.double()).float()


CASES = {
    "self, all lengths differ": ([0, 3, 10, 11, 30], [0, 3, 10, 11, 30]),
    "self, equal lengths grouped": ([0, 5, 10, 15, 19, 23], [0, 5, 10, 15, 19, 23]),
    "cross": ([0, 3, 10, 11, 30], [0, 4, 5, 12, 14]),
}


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_block_diagonal_reference(backend, case):
    cu_q, cu_k = (torch.tensor(c, dtype=torch.int32) for c in CASES[case])
    q = torch.randn(int(cu_q[-1]), 2, 8)
    k, v = torch.randn(2, int(cu_k[-1]), 2, 8)
    lq, lk = torch.diff(cu_q), torch.diff(cu_k)
    with torch.no_grad():
        out = attention(q, k, v, cu_q, cu_k, int(lq.max()), int(lk.max()), backend)
    assert out.shape == q.shape
    assert (out - _dense_reference(q, k, v, cu_q, cu_k)).abs().max() < 1e-5


def test_sdpa_backward_matches_reference():
    cu = torch.tensor([0, 5, 10, 17], dtype=torch.int32)
    q, k, v = (torch.randn(17, 2, 8, requires_grad=True) for _ in range(3))
    attention(q, k, v, cu, cu, 7, 7, "sdpa").square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    _dense_reference(q, k, v, cu, cu).square().sum().backward()
    assert all(torch.allclose(a, t.grad, atol=1e-5) for a, t in zip(grads, (q, k, v)))


def test_auto_is_sdpa_on_cpu_and_unavailable_backends_are_errors():
    assert resolve_backend("auto", "cpu", torch.float32) == "sdpa"
    with pytest.raises(ValueError, match="attention backend 'flash' is not available on cpu"):
        resolve_backend("flash", "cpu", torch.float32)
    with pytest.raises(ValueError, match="attention backend 'xformers' is not available"):
        resolve_backend("xformers", "cpu", torch.bfloat16)
    with pytest.raises(ValueError, match="unknown attention backend 'magic'"):
        resolve_backend("magic", "cpu", torch.float32)


def test_flex_refuses_cpu_training_clearly():
    cu = torch.tensor([0, 4], dtype=torch.int32)
    q = torch.randn(4, 1, 8, requires_grad=True)
    with pytest.raises(ValueError, match="'flex' has no backward on CPU"):
        attention(q, q, q, cu, cu, 4, 4, "flex")
