"""Everything GPU-specific in one command, a few minutes on one H100/H200:

    python -m bench.gpu

Runs on a bare CUDA machine: it imports only torch, einops, safetensors and the project's model code
(no diffusers, DeepSpeed, transformers, PyYAML, flash-attn or xformers needed; tests/test_bench_gpu.py
checks the imports). Without a CUDA device it prints one JSON line saying it skipped, and exits 0.

1. Attention backends on packed rows (bf16, samples of mixed lengths): flash-attn varlen, xformers and
   FlexAttention each against SDPA, forward output and q/k/v gradients. Each bf16 result is compared
   with an fp32 SDPA reference; a backend passes when its error is within twice SDPA's own bf16 error
   (plus 1e-3): as accurate as the SDPA path the model falls back to. A backend that is not installed
   reports `unavailable`; one that fails reports its error.
2. Training-step MFU, bf16: forward + backward + AdamW of a DiT of DiT-B width (768, 12 heads) and of
   DiT-XL width (1152, 16 heads), 4 blocks each (every block is the same: depth changes the step time,
   not its FLOP mix), on rows of 8k and 32k tokens (4 clips each), attention backend "auto". Model FLOPs
   from videodit.cost_model over the bf16 matmul peak measured in the same run (bench.packing).
3. Sampling-step time of the design card request (720x1280, 64 frames: latent 16x17x90x160 with the
   default VAE's strides 4 and 8), conditional and unconditional pass packed in one row as generate.py
   does: one model forward plus an Euler update, 4 steps timed after a warm-up, extrapolated to the
   model's step count. Models, bf16: the embedded default (its own steps), and a random model of
   Wan2.1-T2V-1.3B's shape (width 1536, 30 blocks, 12 heads, FFN 8960, tubelet 1x2x2, 512 text tokens of
   width 4096; 50 steps) built with VideoDiT's own architecture, not Wan's (no shared modulation table
   or Wan block layout), so it has Wan's size and token count, not its exact layers.

Prints one JSON object per line; the last is a summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from bench.packing import matmul_peak
from videodit.attention import attention, available_backends, resolve_backend
from videodit.cost_model import cost_model
from videodit.model import DiTConfig, VideoDiT
from videodit.packing import pack

DESIGN_CARD_LATENT = (16, 17, 90, 160)  # 64 frames of 720x1280 through strides (4, 8, 8)
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "videodit" / "default"
WAN_1_3B = dict(in_channels=16, text_dim=4096, hidden_size=1536, depth=30, num_heads=12,
                mlp_ratio=8960 / 1536, patch=(1, 2, 2))


def emit(**kw) -> dict:
    print(json.dumps(kw), flush=True)
    return kw


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ------------------------------------------------------------------ 1. attention backends


def _attention_with_grads(backend: str, q, k, v, cu, max_len: int, upstream):
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out = attention(q, k, v, cu, cu, max_len, max_len, backend)  # (N, nh, dh)
    out.backward(upstream.to(out.dtype))
    return [out.detach().float(), q.grad.float(), k.grad.float(), v.grad.float()]


def _relative_errors(got, ref) -> list[float]:
    return [float((g - r).abs().max() / r.abs().max()) for g, r in zip(got, ref)]


def check_backends(device, lengths=(4096, 1000, 3000, 517, 77, 2048), nh: int = 16,
                   dh: int = 64) -> list[dict]:
    """Each backend against SDPA on one packed row of samples of `lengths` tokens."""
    lengths = list(lengths)
    g = torch.Generator(device=device).manual_seed(0)
    n = sum(lengths)
    q, k, v, upstream = (torch.randn(n, nh, dh, device=device, generator=g) for _ in range(4))
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=device)
    cu[1:] = torch.tensor(lengths, device=device).cumsum(0)
    bf16 = [x.to(torch.bfloat16) for x in (q, k, v)]
    reference = _attention_with_grads("sdpa", q, k, v, cu, max(lengths), upstream)  # fp32
    sdpa_err = _relative_errors(_attention_with_grads("sdpa", *bf16, cu, max(lengths), upstream), reference)
    out = [emit(check="attention", backend="sdpa", status="reference", error_out=sdpa_err[0],
                error_grad=max(sdpa_err[1:]))]
    available = available_backends(device, torch.bfloat16)
    for backend in ("flash", "xformers", "flex"):
        if backend not in available:
            out.append(emit(check="attention", backend=backend, status="unavailable"))
            continue
        try:
            got = _attention_with_grads(backend, *bf16, cu, max(lengths), upstream)
        except Exception as e:  # report and go on: the other checks still run
            out.append(emit(check="attention", backend=backend, status="error", error=repr(e)[:300]))
            continue
        err = _relative_errors(got, reference)
        ok = all(e <= 2 * s + 1e-3 for e, s in zip(err, sdpa_err))
        out.append(emit(check="attention", backend=backend, status="pass" if ok else "fail",
                        error_out=err[0], error_grad=max(err[1:]), sdpa_error_out=sdpa_err[0],
                        sdpa_error_grad=max(sdpa_err[1:])))
    return out


# ------------------------------------------------------------------ 2. training MFU


def _clip_row(tokens: int, clips: int, text_dim: int, device, dtype):
    """A row of `clips` equal clips, `tokens` tokens in all (patch 1x2x2, 8 latent frames each)."""
    per_frame = tokens // clips // 8
    side = int(per_frame**0.5)
    latent = (16, 8, 2 * side, 2 * (per_frame // side))
    g = torch.Generator().manual_seed(0)
    latents = [torch.randn(latent, generator=g) for _ in range(clips)]
    texts = [torch.randn(20, text_dim, generator=g) for _ in range(clips)]
    return pack(latents, texts, (1, 2, 2)).to(device=device, dtype=dtype)


def training_mfu(device, peak: float, width: int, heads: int, tokens: int, steps: int = 5,
                 depth: int = 4) -> dict:
    cfg = DiTConfig(in_channels=16, text_dim=384, hidden_size=width, depth=depth, num_heads=heads,
                    patch=(1, 2, 2))
    with torch.device(device):
        model = VideoDiT(cfg).to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    packed = _clip_row(tokens, 4, cfg.text_dim, device, torch.bfloat16)
    t = torch.rand(packed.num_samples, device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        model.forward_packed(packed, t).float().pow(2).mean().backward()
        opt.step()

    step()
    step()
    _sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    seconds = (time.perf_counter() - t0) / steps
    flops = cost_model(cfg, "bf16").row_flops(packed.seqlens, [20] * packed.num_samples)
    return emit(check="train_mfu", width=width, heads=heads, depth=cfg.depth, tokens=sum(packed.seqlens),
                backend=resolve_backend("auto", device, torch.bfloat16), step_s=round(seconds, 4),
                tflops=float(f"{flops / seconds / 1e12:.3g}"), mfu=float(f"{flops / seconds / peak:.3g}"))


# ------------------------------------------------------------------ 3. sampling step


def load_embedded_default(device, dtype) -> tuple[VideoDiT, int]:
    """The shipped default DiT from its JSON config and safetensors (videodit.checkpoint would pull in
    the YAML config module) -> (model, its sampling steps)."""
    from safetensors.torch import load_file

    data = json.loads((DEFAULT_DIR / "config.json").read_text())
    cfg = DiTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["dit"].items()})
    model = VideoDiT(cfg)
    model.load_state_dict(load_file(str(DEFAULT_DIR / "model.safetensors")))
    return model.to(device=device, dtype=dtype).eval(), int(data["meta"].get("sampling", {}).get("steps", 32))


def build_wan_shaped(device) -> VideoDiT:
    """A random bf16 VideoDiT of Wan2.1-T2V-1.3B's width, depth, heads and FFN, built on `device`."""
    torch.manual_seed(0)
    with torch.device(device):
        return VideoDiT(DiTConfig(**WAN_1_3B)).to(torch.bfloat16).eval()


@torch.no_grad()
def sampling_step(model: VideoDiT, steps_total: int, text_tokens: int, name: str, timed: int = 4,
                  latent: tuple[int, int, int, int] = DESIGN_CARD_LATENT) -> dict:
    """Seconds per sampling step (model forward on the packed cond + uncond row, CFG 5, Euler update)."""
    device, dtype = model.x_embedder.weight.device, model.x_embedder.weight.dtype
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(latent, generator=g)
    text = torch.randn(text_tokens, model.config.text_dim, generator=g)
    packed = pack([noise, noise], [text, text[:0]], model.config.patch).to(device=device, dtype=dtype)
    x, dt = packed.tokens, 1.0 / steps_total
    for i in range(timed + 1):  # the first is a warm-up
        if i == 1:
            _sync()
            t0 = time.perf_counter()
        t = torch.full((2,), 1.0 - i * dt, device=device)
        v = model.forward_packed(dataclasses.replace(packed, tokens=x), t)  # (N, D_in) cond and uncond
        cond, uncond = v.split(packed.seqlens)
        guided = uncond + 5.0 * (cond - uncond)
        x = x - dt * torch.cat([guided, guided])  # Euler step, the same update for both passes
    _sync()
    seconds = (time.perf_counter() - t0) / timed
    params = sum(p.numel() for p in model.parameters())
    return emit(check="sampling_step", model=name, params_m=round(params / 1e6, 1), latent=list(latent),
                tokens_per_pass=packed.seqlens[0], step_s=round(seconds, 4), steps=steps_total,
                sampling_s_extrapolated=round(seconds * steps_total, 1))


# ------------------------------------------------------------------ main


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.parse_args(argv)
    if not torch.cuda.is_available():
        return [emit(bench="gpu", skipped="no CUDA device")]
    device = torch.device("cuda")
    start = time.perf_counter()
    out = [emit(bench="gpu", device=torch.cuda.get_device_name(), torch=torch.__version__,
                date=time.strftime("%Y-%m-%d"))]

    def guarded(name: str, fn, *args):  # one failing check must not stop the others
        try:
            return fn(*args)
        except Exception as e:
            return emit(check=name, status="error", error=repr(e)[:300])
        finally:
            torch.cuda.empty_cache()

    backends = guarded("attention", check_backends, device)
    out += backends if isinstance(backends, list) else [backends]
    peak = matmul_peak(device, torch.bfloat16)
    out.append(emit(check="matmul_peak", dtype="bf16", tflops=round(peak / 1e12, 1)))
    for width, heads in ((768, 12), (1152, 16)):
        for tokens in (8192, 32768):
            out.append(guarded("train_mfu", training_mfu, device, peak, width, heads, tokens))
    default = guarded("sampling_step", load_embedded_default, device, torch.bfloat16)
    if isinstance(default, tuple):
        out.append(guarded("sampling_step", sampling_step, *default, 8, "embedded default"))
        del default
    wan = guarded("sampling_step", build_wan_shaped, device)
    if isinstance(wan, VideoDiT):
        name = "Wan2.1-1.3B-shaped VideoDiT (random)"
        out.append(guarded("sampling_step", sampling_step, wan, 50, 512, name))
        del wan
    mfus = [r["mfu"] for r in out if isinstance(r, dict) and r.get("check") == "train_mfu" and "mfu" in r]
    out.append(emit(summary="gpu", seconds=round(time.perf_counter() - start, 1),
                    attention={r["backend"]: r["status"] for r in out
                               if isinstance(r, dict) and r.get("check") == "attention"},
                    train_mfu=mfus, matmul_tflops=round(peak / 1e12, 1)))
    return out


if __name__ == "__main__":
    main()
