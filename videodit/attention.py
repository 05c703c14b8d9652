"""Variable-length attention over packed sequences, behind one function with several backends.

`attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, backend)`: q `(Nq, nh, dh)`, k/v `(Nk, nh, dh)`,
segment i of q (rows cu_seqlens_q[i]:cu_seqlens_q[i+1]) attends only to segment i of k/v. Self-attention
passes the same cu_seqlens twice; cross-attention passes the video and text offsets. No mask is ever
materialised over the whole packed sequence by the sdpa, xformers or flash backends.

Backends:
- "sdpa":     torch scaled_dot_product_attention per segment; segments of equal (Lq, Lk) are gathered into
              one batched call. Works everywhere; the CPU default.
- "flex":     torch FlexAttention with a document mask (`sample_q[q_idx] == sample_k[kv_idx]`), one call
              for the whole sequence. Compiled on CUDA; on CPU torch runs it eagerly, forward only (checks).
- "xformers": xformers memory_efficient_attention with a BlockDiagonalMask (CUDA, if installed).
- "flash":    flash-attn `flash_attn_varlen_func` (CUDA, fp16/bf16, if installed).
- "auto":     flash (half precision) > xformers > sdpa on CUDA; sdpa on CPU.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections import defaultdict

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flex", "xformers", "flash")


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Concrete backends that can run on `device` with `dtype` on this machine."""
    device = torch.device(device)
    out = ["sdpa"]
    if _has("torch.nn.attention.flex_attention"):
        out.append("flex")
    if device.type == "cuda":
        if _has("xformers"):
            out.append("xformers")
        if _has("flash_attn") and dtype in (torch.float16, torch.bfloat16):
            out.append("flash")
    return out


def resolve_backend(backend: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """'auto' -> the best available backend; a requested unavailable backend is a ValueError."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {list(BACKENDS)}")
    avail = available_backends(device, dtype)
    if backend == "auto":
        for name in ("flash", "xformers", "sdpa"):
            if name in avail:
                return name
    if backend not in avail:
        raise ValueError(
            f"attention backend {backend!r} is not available on {torch.device(device).type} with {dtype} "
            f"(available here: {avail}); flash needs CUDA + flash-attn + fp16/bf16, "
            "xformers needs CUDA + xformers"
        )
    return backend


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_q: int,
    max_k: int,
    backend: str = "auto",
    seqlens: tuple[list[int], list[int]] | None = None,
) -> torch.Tensor:
    """Block-diagonal attention of packed q `(Nq, nh, dh)` over k, v `(Nk, nh, dh)` -> `(Nq, nh, dh)`.

    `seqlens`: the segment lengths of q and k as Python lists, when the caller already has them (the model
    computes them once per forward), so the sdpa/xformers paths skip a device-to-host copy per call."""
    if q.dim() != 3 or k.shape != v.shape or q.shape[1:] != k.shape[1:]:
        raise ValueError(
            f"expected q (Nq, nh, dh) and k, v (Nk, nh, dh); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(
            f"cu_seqlens_q has {cu_seqlens_q.numel() - 1} segments, cu_seqlens_k {cu_seqlens_k.numel() - 1}"
        )
    backend = resolve_backend(backend, q.device, q.dtype)
    if (
        backend == "flex"
        and q.device.type == "cpu"
        and torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad or v.requires_grad)
    ):
        raise ValueError(
            "attention backend 'flex' has no backward on CPU in torch; use 'sdpa' for CPU training"
        )
    if seqlens is None and backend in ("sdpa", "xformers"):
        seqlens = torch.diff(cu_seqlens_q).tolist(), torch.diff(cu_seqlens_k).tolist()
    if backend == "sdpa":
        return _sdpa_segments(q, k, v, *seqlens)
    if backend == "flex":
        return _flex(q, k, v, cu_seqlens_q, cu_seqlens_k)
    if backend == "xformers":
        return _xformers(q, k, v, *seqlens)
    return _flash(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k)


def _sdpa_segments(q, k, v, lens_q: list[int], lens_k: list[int]) -> torch.Tensor:
    """Per-segment SDPA; segments of the same (Lq, Lk) are stacked into one batched call.

    Segments are cut with `split` and joined with `cat` (no index scatter), so backward stays linear in N.
    """
    qs, ks, vs = q.split(lens_q), k.split(lens_k), v.split(lens_k)  # views (L_i, nh, dh)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (lq, lk) in enumerate(zip(lens_q, lens_k)):
        groups[(lq, lk)].append(i)
    outs: list[torch.Tensor | None] = [None] * len(lens_q)
    for (lq, lk), seg in groups.items():
        if lq == 0 or lk == 0:  # no queries, or nothing to attend to: zeros
            for i in seg:
                outs[i] = q.new_zeros(lq, *q.shape[1:])
            continue
        qb = torch.stack([qs[i] for i in seg]).transpose(1, 2)  # (G, nh, Lq, dh)
        kb = torch.stack([ks[i] for i in seg]).transpose(1, 2)  # (G, nh, Lk, dh)
        vb = torch.stack([vs[i] for i in seg]).transpose(1, 2)
        o = F.scaled_dot_product_attention(qb, kb, vb).transpose(1, 2)  # (G, Lq, nh, dh)
        for i, oi in zip(seg, o.unbind(0)):
            outs[i] = oi
    return torch.cat(outs)  # (Nq, nh, dh)


def _segment_ids(cu: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) index of the segment each position of a packed sequence belongs to."""
    return torch.searchsorted(cu[1:].long(), torch.arange(n, device=cu.device), right=True)


@functools.cache
def _flex_fn(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True) if compiled else flex_attention


def _flex(q, k, v, cu_q, cu_k) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask

    nq, nk = q.shape[0], k.shape[0]
    doc_q, doc_k = _segment_ids(cu_q.to(q.device), nq), _segment_ids(cu_k.to(q.device), nk)

    def document(b, h, q_idx, kv_idx):
        return doc_q[q_idx] == doc_k[kv_idx]

    mask = create_block_mask(document, B=None, H=None, Q_LEN=nq, KV_LEN=nk, device=q.device)
    compiled = q.device.type == "cuda"
    with warnings.catch_warnings():
        if not compiled:  # the eager CPU path is deliberate: quiet torch's "use torch.compile" advice
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        o = _flex_fn(compiled)(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=mask
        )
    return o[0].transpose(0, 1)  # (Nq, nh, dh)


def _xformers(q, k, v, lens_q: list[int], lens_k: list[int]) -> torch.Tensor:
    from xformers.ops import fmha

    bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(lens_q, lens_k)
    o = fmha.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias)  # (1, Nq, nh, dh)
    return o[0]


def _flash(q, k, v, cu_q, cu_k, max_q, max_k) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(
        q,
        k,
        v,
        cu_q.to(device=q.device, dtype=torch.int32),
        cu_k.to(device=q.device, dtype=torch.int32),
        int(max_q),
        int(max_k),
        dropout_p=0.0,
        causal=False,
    )
