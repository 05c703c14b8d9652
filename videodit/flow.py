"""Rectified flow (flow matching) objective for packed batches of videos of any shape.

Forward process, per sample, t in [0, 1] (t = 1 is pure noise, the same convention as diffusers'
FlowMatch schedulers where sigma = t):

    x_t = (1 - t) * x0 + t * noise,        target velocity v = dx_t/dt = noise - x0.

Timesteps: t = sigmoid(u), u ~ N(logit_mean, logit_std) (logit-normal, SD3), then shifted per sample by
its token count. A sample with more tokens has more redundant pixels, so the same t destroys less of
its signal; shifting t towards 1 keeps the signal-to-noise ratio the model sees comparable across
resolutions and durations (SD3 / Flux / Open-Sora "resolution-dependent shift"):

    mu(L) = base_shift + (max_shift - base_shift) * (L - base_tokens) / (max_tokens - base_tokens)
    s     = exp(mu)              (L clamped to [base_tokens, max_tokens], so s stays in a known range)
    t'    = s * t / (1 + (s - 1) * t)

Each sample in a packed batch gets its own t' from its own L (its full token count, before NaViT token
dropping). Sampling (`videodit.sampling`) uses exactly the same `timestep_shift`, so training and
inference agree.

Parameterisation: the model predicts either v directly or the clean latent x0 (`DiTConfig.prediction`).
An x0 prediction becomes v = (x_t - x0) / max(t, X0_T_FLOOR) (`to_velocity`) before the loss and in the
samplers, so the loss is always the velocity error (JiT: x-prediction with a v-loss, the denominator
clipped at 0.05).

Loss: mean squared velocity error over each sample's kept tokens (and channels), then the plain mean of
those per-sample losses. Averaging over all tokens of the packed batch instead would weight each sample
by its token count: one 64-frame 720p clip would outweigh dozens of images packed beside it, and the
effective objective would change with the packing. Per-sample means make every clip count once, as in
an ordinary padded batch, and keep the loss scale independent of how many tokens were dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from videodit.packing import num_tokens, pack, pack_like, token_timesteps, unpack
from videodit.sequence_parallel import ParallelGroups, forward_shard, sample_means


@dataclass
class FlowConfig:
    logit_mean: float = 0.0  # u ~ N(logit_mean, logit_std), t = sigmoid(u)
    logit_std: float = 1.0
    shift: bool = True  # resolution/duration-dependent timestep shift on/off
    base_tokens: int = 256  # token count at which mu = base_shift
    max_tokens: int = 16384  # token count at which mu = max_shift (about 64 frames of 720p at ss=16)
    base_shift: float = 0.5  # mu at base_tokens (shift factor e^0.5 = 1.65)
    max_shift: float = 1.6  # mu at max_tokens (shift factor e^1.6 = 4.95)
    text_drop_prob: float = 0.1  # fraction of samples trained with no text (null token) for CFG
    # Share of samples whose t is drawn U(0, 1) and NOT shifted. A shifted logit-normal with logit_mean > 0
    # almost never draws low noise (logit_mean 1, shift 1.65: t < 0.3 for ~1% of samples), where the fine
    # detail of a sample (an object's corners) is settled; this keeps that end trained.
    uniform_fraction: float = 0.0
    # Pixel-space term (0 = off): pixel_weight x the mean squared error between the VAE decoder's pixels of
    # the predicted x0 and of the clean latent, for up to `pixel_samples` samples of each row with
    # t <= pixel_max_t. The latent loss weighs a direction by its variance; this one by what it changes on
    # screen (a square's corners sit in low-variance directions but cover ~20% of its box). The trainer
    # passes the decoder (without the VAE's pixel refiner: `CausalVAE3D.decode_coarse`) to `flow_loss`.
    pixel_weight: float = 0.0
    pixel_max_t: float = 1.0
    pixel_samples: int = 1

    def __post_init__(self):
        if not self.logit_std > 0:
            raise ValueError(f"logit_std must be > 0, got {self.logit_std}")
        if self.base_tokens < 1:
            raise ValueError(f"base_tokens must be >= 1, got {self.base_tokens}")
        if self.max_tokens <= self.base_tokens:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be > base_tokens ({self.base_tokens})")
        if self.max_shift < self.base_shift:
            raise ValueError(f"max_shift ({self.max_shift}) must be >= base_shift ({self.base_shift})")
        if not 0.0 <= self.text_drop_prob <= 1.0:
            raise ValueError(f"text_drop_prob must be in [0, 1], got {self.text_drop_prob}")
        if not 0.0 <= self.uniform_fraction <= 1.0:
            raise ValueError(f"uniform_fraction must be in [0, 1], got {self.uniform_fraction}")
        if self.pixel_weight < 0:
            raise ValueError(f"pixel_weight must be >= 0, got {self.pixel_weight}")
        if not 0.0 < self.pixel_max_t <= 1.0:
            raise ValueError(f"pixel_max_t must be in (0, 1], got {self.pixel_max_t}")
        if self.pixel_samples < 1:
            raise ValueError(f"pixel_samples must be >= 1, got {self.pixel_samples}")


def shift_mu(tokens: int, cfg: FlowConfig) -> float:
    """mu, linear in the clamped token count: (base_tokens, base_shift) to (max_tokens, max_shift)."""
    if tokens < 1:
        raise ValueError(f"token count must be >= 1, got {tokens}")
    n = min(max(tokens, cfg.base_tokens), cfg.max_tokens)
    frac = (n - cfg.base_tokens) / (cfg.max_tokens - cfg.base_tokens)
    return cfg.base_shift + (cfg.max_shift - cfg.base_shift) * frac


def timestep_shift(tokens: int, cfg: FlowConfig) -> float:
    """Shift factor s = exp(mu(tokens)) (1.0 when `cfg.shift` is off). Non-decreasing in the token count."""
    return math.exp(shift_mu(tokens, cfg)) if cfg.shift else 1.0


def shift_timesteps(t: torch.Tensor, shift: torch.Tensor | float) -> torch.Tensor:
    """t' = s t / (1 + (s - 1) t): maps [0, 1] onto itself, fixes 0 and 1, pushes t towards 1 for s > 1."""
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(
    tokens: Sequence[int], cfg: FlowConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample training timesteps (B,) float32 in (0, 1): logit-normal, shifted by each sample's tokens;
    a `cfg.uniform_fraction` share instead U(0, 1), unshifted."""
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.randn(len(tokens), generator=generator, device=device)  # (B,)
    t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * u)
    shifts = torch.tensor([timestep_shift(n, cfg) for n in tokens], device=device)
    t = shift_timesteps(t, shifts)
    if cfg.uniform_fraction > 0:  # no extra draws otherwise: runs without it keep their random stream
        pick = torch.rand(len(tokens), generator=generator, device=device) < cfg.uniform_fraction
        flat = torch.rand(len(tokens), generator=generator, device=device).clamp(1e-4, 1 - 1e-4)
        t = torch.where(pick, flat, t)
    return t


X0_T_FLOOR = 0.05  # smallest t dividing an x0 prediction in `to_velocity`


def to_velocity(
    output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor | float,
    prediction: str,
    t_floor: float = X0_T_FLOOR,
) -> torch.Tensor:
    """The model's raw output -> velocity, for either parameterisation.

    output and x_t have the same shape; t broadcasts against them (a float, or e.g. (N, 1) per token).
    "velocity": output unchanged. "x0": v = (x_t - x0) / max(t, t_floor). Training keeps the default
    floor (it bounds the loss weight 1/t^2 of the x0 error); samplers pass a tiny one, because a solver
    step of size dt <= t then moves exactly dt/t of the way to x0, whereas a clipped denominator would
    stall the last steps (diffusers' schedules end near t = 0.001).
    """
    if prediction == "velocity":
        return output
    if prediction != "x0":
        raise ValueError(f"prediction must be 'velocity' or 'x0', got {prediction!r}")
    if not torch.is_tensor(t):
        t = torch.tensor(float(t), device=output.device)
    return (x_t.to(output.dtype) - output) / t.to(output.dtype).clamp(min=t_floor)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise."""
    return (1 - t) * x0 + t * noise


def per_sample_mean(values: torch.Tensor, sample_id: torch.Tensor, num_samples: int) -> torch.Tensor:
    """values (N,) per token, sample_id (N,) -> (S,) mean of each sample's tokens."""
    sums = torch.zeros(num_samples, device=values.device, dtype=values.dtype).index_add_(0, sample_id, values)
    counts = torch.bincount(sample_id, minlength=num_samples).to(values.dtype)
    return sums / counts


def flow_loss(
    model,
    latents: Sequence[torch.Tensor],
    text_embeds: Sequence[torch.Tensor],
    cfg: FlowConfig,
    generator: torch.Generator | None = None,
    drop_rate: float = 0.0,
    pixel_decoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    cond_frames: Sequence[torch.Tensor] | None = None,
    parallel: ParallelGroups | None = None,
    empty_text: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified-flow loss of `model` on clean latents [(C, T_i, H_i, W_i)] with text [(L_i, D_text)].

    `cond_frames`, optional, one bool `(T_i,)` per sample: those latent frames are conditioning (image-to-
    video, extension): they stay clean in x_t, their tokens carry t = 0 and are left out of the loss. Each
    sample must keep at least one frame to denoise.

    A `cfg.text_drop_prob` fraction of samples (chosen at random) get zero-length text, so the model
    learns its null text token for classifier-free guidance; with `empty_text` `(L, D_text)` (a model
    without a null token, e.g. Wan: the padded encoding of "") they get that text instead. `drop_rate` is
    the NaViT token drop rate passed to `pack`; the velocity targets go through `pack_like`, so they drop
    the same tokens.
    `pixel_decoder` (latent (1, C, T, H, W) -> pixels, differentiable) with `cfg.pixel_weight` > 0 adds
    the pixel-space term (FlowConfig); it needs drop_rate 0 (a dropped token has no x0 prediction).
    Random draws, in order: timesteps, text-drop mask, noise, token drop, pixel-term samples; all from
    `generator`.

    `parallel` with a sequence size above 1: the ranks of its sequence group share the row (they pass the
    same latents and equal generators) and each runs the model on its slice of the row's tokens
    (`videodit.sequence_parallel.forward_shard`); per-sample losses are summed over the group, so every
    rank returns the whole row's loss, and gradients reach this rank's tokens only (back-propagate
    `scaled_for_mean_reducer(loss, size)` under a reducer that averages over all ranks). The pixel term
    needs whole samples on one rank and is refused.

    Returns (loss scalar float32, per_sample (B,) float32): the latent loss of each sample; loss =
    per_sample.mean() plus the pixel term when it is on.
    """
    pixel_on = pixel_decoder is not None and cfg.pixel_weight > 0
    sharded = parallel is not None and parallel.sequence_size > 1
    if pixel_on and sharded:
        raise ValueError(f"flow.pixel_weight > 0 needs whole samples on one rank; it cannot run with "
                         f"parallel.sequence={parallel.sequence_size}")
    if pixel_on and drop_rate:
        raise ValueError("flow.pixel_weight > 0 needs token drop 0: a dropped token has no x0 prediction")
    if len(latents) != len(text_embeds):
        raise ValueError(f"got {len(latents)} latents but {len(text_embeds)} text embeddings")
    patch = tuple(model.config.patch)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    causal = bool(getattr(model.config, "causal_tubelet", False))
    lengths = [num_tokens(tuple(z.shape[1:]), patch, causal) for z in latents]
    t = sample_timesteps(lengths, cfg, generator)  # (B,)
    drop_text = torch.rand(len(latents), generator=generator, device=gen_device) < cfg.text_drop_prob  # (B,)
    dropped = (lambda e: e[:0]) if empty_text is None else (lambda e: empty_text.to(e))
    texts = [dropped(e) if drop else e for e, drop in zip(text_embeds, drop_text.tolist())]
    noisy, targets = [], []
    for i, (z, t_i) in enumerate(zip(latents, t.tolist())):
        noise = torch.randn(z.shape, generator=generator, device=gen_device).to(z)  # (C, T, H, W)
        x_t = interpolate(z, noise, t_i)
        if cond_frames is not None:
            x_t = torch.where(cond_frames[i].to(z.device)[None, :, None, None], z, x_t)  # clean conditioning
        noisy.append(x_t)
        targets.append(noise - z)  # velocity
    packed = pack(noisy, texts, patch, drop_rate=drop_rate, generator=generator, causal=causal)
    target = pack_like(packed, targets)  # (N, D_in)
    per_token = None
    if cond_frames is not None:
        if any(bool(c.all()) for c in cond_frames):
            raise ValueError("every sample needs a latent frame to denoise: cond_frames covers all of one")
        frame_t = [torch.where(c.cpu(), 0.0, t_i) for c, t_i in zip(cond_frames, t.tolist())]
        per_token = token_timesteps(packed, frame_t)  # (N,)
        is_cond = token_timesteps(packed, [c.float() for c in cond_frames]) > 0  # (N,)
    if sharded:  # this rank's tokens [shard.start, shard.end) of the row: n of N
        pred, local, shard = forward_shard(model.forward_packed, packed, t.to(latents[0].device),
                                           parallel.sequence_rank, parallel.sequence_size,
                                           parallel.sequence_group, token_timesteps=per_token)  # (n, D_in)
        rows = slice(shard.start, shard.end)
        tokens, target = local.tokens, target[rows]  # (n, D_in)
        sample_id = local.sample_id + shard.first_sample  # (n,) row sample of each token
        if per_token is not None:
            is_cond = is_cond[rows]  # (n,)
    else:
        extra = {} if per_token is None else {"token_timesteps": per_token}
        pred = model.forward_packed(packed, t.to(latents[0].device), **extra)  # (N, D_in)
        tokens, sample_id = packed.tokens, packed.sample_id
    prediction = getattr(model.config, "prediction", "velocity")
    sample_id = sample_id.to(pred.device)
    t_tok = t.to(pred.device)[sample_id][:, None]  # (N, 1)
    x_t = tokens.to(pred.device).float()
    if pixel_on:  # the x0 prediction, (N, D_in), for the pixel term
        x0_pred = pred.float() if prediction == "x0" else x_t - t_tok * pred.float()
    if prediction != "velocity":
        pred = to_velocity(pred.float(), x_t, t_tok, prediction)
    diff = pred.float() - target.float()  # (N, D_in)
    err = diff.pow(2).mean(dim=1)  # (N,)
    if sharded:  # means over each whole sample of the row, summed over the sequence group
        group = parallel.sequence_group
        if per_token is None:
            per_sample = sample_means(err, local, shard, group)  # (B,)
        else:  # conditioning tokens are given, not predicted: mean over the denoised ones
            denoised = (~is_cond.to(err.device)).to(err.dtype)  # (n,)
            per_sample = (sample_means(err * denoised, local, shard, group)
                          / sample_means(denoised, local, shard, group))  # (B,)
    else:
        if per_token is not None:  # conditioning tokens are given, not predicted
            denoised = ~is_cond.to(err.device)
            err, sample_id = err[denoised], sample_id[denoised]
        per_sample = per_sample_mean(err, sample_id, packed.num_samples)  # (B,)
    loss = per_sample.mean()
    if pixel_on:
        pixels = pixel_term(packed, x0_pred, latents, t, cfg, pixel_decoder, generator)
        loss = loss + cfg.pixel_weight * pixels
    return loss, per_sample


def pixel_term(packed, x0_pred: torch.Tensor, latents: Sequence[torch.Tensor], t: torch.Tensor,
               cfg: FlowConfig, decoder: Callable[[torch.Tensor], torch.Tensor],
               generator: torch.Generator | None) -> torch.Tensor:
    """Mean pixel MSE between decoder(x0 prediction) and decoder(clean latent) over up to
    cfg.pixel_samples samples with t <= cfg.pixel_max_t, picked at random; 0 if there is none."""
    eligible = [i for i, t_i in enumerate(t.tolist()) if t_i <= cfg.pixel_max_t]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(len(eligible), generator=generator, device=gen_device).tolist()
    chosen = [eligible[k] for k in order[: cfg.pixel_samples]]
    if not chosen:
        return x0_pred.sum() * 0.0  # keeps the graph (and DeepSpeed's gradient hooks) the same
    channels = latents[0].shape[0]
    per_clip = unpack(packed, x0_pred, channels)  # [(C, T, H, W)]
    errs = []
    for i in chosen:
        with torch.no_grad():
            target = decoder(latents[i][None].to(x0_pred))  # (1, 3, F, H, W)
        errs.append((decoder(per_clip[i][None]) - target).pow(2).mean())
    return torch.stack(errs).mean()
