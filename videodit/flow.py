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

from vae3d.losses import focused_mse
from videodit.packing import num_tokens, pack, pack_like, token_timesteps, unpack


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
    # Upper end of the training noise levels: every drawn t (either kind above) is scaled by max_t, so a run
    # with max_t < 1 trains a denoiser for the low-noise end only (an expert for the last sampling steps;
    # configs/default_dit_refiner.yaml measured one: it did not keep squares). 1 = the whole range.
    max_t: float = 1.0
    # Token-space loss weighting (0 = off, the plain mean squared error). The error of each token is
    # measured along the principal directions of the training tokens, direction k weighted by
    # ((var_k + floor) / mean_var) ** -loss_whiten (1 = whitened, 0.5 = half way): an object's shape lives in
    # directions holding < 3% of the variance, which the plain loss all but ignores. `token_loss_map`
    # builds the map from data statistics; the trainer passes it to `flow_loss`. Measured on the default
    # (BENCHMARKS.md): 0.5 for 4000 steps left shape where it was; 1.0 lost colour and motion within 2000.
    loss_whiten: float = 0.0
    whiten_floor: float = 0.01  # added to each direction's variance, as a fraction of the mean variance
    # Latent-channel loss weighting by what a channel changes on screen (0 = off). The trainer measures,
    # through the VAE's decoder, the pixel change per unit change of each normalised latent channel (its
    # sensitivity s_c) and weighs channel c's squared error by (s_c / mean s) ** loss_decoder_power
    # (renormalised to mean 1): 1 makes the latent loss track the decoder's pixel error to first order,
    # 0.5 is half way. Per-channel normalisation gives every channel unit variance whatever it draws: on
    # a PCA-initialised VAE (configs/vae_pca_mix.yaml) the brightest channel moves pixels ~300x more
    # than the faintest, and the plain loss weighs both alike. Exclusive with loss_whiten.
    loss_decoder_power: float = 0.0
    # Pixel-space term (0 = off): pixel_weight x the mean squared error between the VAE decoder's pixels of
    # the predicted x0 and of the clean latent, for up to `pixel_samples` samples of each row with
    # t <= pixel_max_t. The latent loss weighs a direction by its variance; this one by what it changes on
    # screen (a square's corners sit in low-variance directions but cover ~20% of its box). The trainer
    # passes the decoder (without the VAE's pixel refiner: `CausalVAE3D.decode_coarse`) to `flow_loss`.
    pixel_weight: float = 0.0
    pixel_max_t: float = 1.0
    pixel_samples: int = 1
    # Object focus of the pixel term (0 = off, a plain mean): each pixel's squared error is weighted
    # 1 + pixel_focus where the clean frame differs from its clip's background (the clip's median colour)
    # by more than `focus_threshold` (in the decoder's [-1, 1] units) in some channel, dilated by
    # `focus_radius` pixels, else 1; the term is then the weighted mean. A small object covers a few
    # percent of the frame and its corners a fraction of that, so the plain mean is nearly all background.
    pixel_focus: float = 0.0
    focus_threshold: float = 0.15
    focus_radius: int = 4

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
        if not 0.0 < self.max_t <= 1.0:
            raise ValueError(f"max_t must be in (0, 1], got {self.max_t}")
        if not 0.0 <= self.loss_whiten <= 1.0:
            raise ValueError(f"loss_whiten must be in [0, 1], got {self.loss_whiten}")
        if not self.whiten_floor > 0:
            raise ValueError(f"whiten_floor must be > 0, got {self.whiten_floor}")
        if not 0.0 <= self.loss_decoder_power <= 2.0:
            raise ValueError(f"loss_decoder_power must be in [0, 2], got {self.loss_decoder_power}")
        if self.loss_decoder_power > 0 and self.loss_whiten > 0:
            raise ValueError("loss_decoder_power and loss_whiten are exclusive: set one of them")
        if self.pixel_weight < 0:
            raise ValueError(f"pixel_weight must be >= 0, got {self.pixel_weight}")
        if not 0.0 < self.pixel_max_t <= 1.0:
            raise ValueError(f"pixel_max_t must be in (0, 1], got {self.pixel_max_t}")
        if self.pixel_samples < 1:
            raise ValueError(f"pixel_samples must be >= 1, got {self.pixel_samples}")
        if self.pixel_focus < 0:
            raise ValueError(f"pixel_focus must be >= 0, got {self.pixel_focus}")
        if not self.focus_threshold > 0:
            raise ValueError(f"focus_threshold must be > 0, got {self.focus_threshold}")
        if self.focus_radius < 0:
            raise ValueError(f"focus_radius must be >= 0, got {self.focus_radius}")


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
    a `cfg.uniform_fraction` share instead U(0, 1), unshifted; all scaled by `cfg.max_t`."""
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.randn(len(tokens), generator=generator, device=device)  # (B,)
    t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * u)
    shifts = torch.tensor([timestep_shift(n, cfg) for n in tokens], device=device)
    t = shift_timesteps(t, shifts)
    if cfg.uniform_fraction > 0:  # no extra draws otherwise: runs without it keep their random stream
        pick = torch.rand(len(tokens), generator=generator, device=device) < cfg.uniform_fraction
        flat = torch.rand(len(tokens), generator=generator, device=device).clamp(1e-4, 1 - 1e-4)
        t = torch.where(pick, flat, t)
    if cfg.max_t < 1.0:
        t = t * cfg.max_t
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


def token_loss_map(tokens: torch.Tensor, power: float, floor: float = 0.01) -> torch.Tensor:
    """Training tokens (N, D) -> map M (D, D) for the loss ||(pred - target) @ M||^2 (see FlowConfig).

    M = U diag(w), U the principal directions of the tokens (columns), w_k = ((var_k + f) / m)^(-power / 2)
    with m the mean variance and f = floor * m, scaled so that mean(w^2) = 1 (the loss keeps its scale on
    isotropic errors). power 0 gives the identity up to rotation, i.e. the plain loss.
    """
    if tokens.dim() != 2 or tokens.shape[0] < 2:
        raise ValueError(f"tokens must be (N >= 2, D), got shape {tuple(tokens.shape)}")
    x = tokens.double()
    cov = torch.cov(x.T)  # (D, D)
    var, U = torch.linalg.eigh(cov)  # ascending
    var = var.clamp(min=0)
    m = var.mean().clamp(min=1e-12)
    w2 = ((var + floor * m) / m).pow(-power)
    w2 = w2 / w2.mean()
    return (U * w2.sqrt()[None, :]).float()


@torch.no_grad()
def decoder_sensitivity(decoder: Callable[[torch.Tensor], torch.Tensor], latents: Sequence[torch.Tensor],
                        eps: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean squared pixel change per unit squared change of each latent channel -> (C,) float32.

    For each clean latent (C, T, H, W) and channel c, perturbs channel c alone by eps * N(0, 1) noise and
    measures mse(decoder(z + d), decoder(z)) / mean(d^2) (a finite-difference estimate of the decoder's
    Jacobian norm along that channel), averaged over the latents."""
    if not latents:
        raise ValueError("decoder_sensitivity needs at least one latent")
    channels = latents[0].shape[0]
    total = torch.zeros(channels, dtype=torch.float64)
    for z in latents:
        z = z[None].float()  # (1, C, T, H, W)
        base = decoder(z).float()
        for c in range(channels):
            d = torch.zeros_like(z)
            gen_device = generator.device if generator is not None else z.device
            noise = torch.randn(z[:, c].shape, generator=generator, device=gen_device).to(z)
            d[:, c] = eps * noise
            change = (decoder(z + d).float() - base).pow(2).mean()
            total[c] += (change / d[:, c].pow(2).mean()).item()
    return (total / len(latents)).float()


def channel_loss_map(sensitivity: torch.Tensor, power: float, patch: tuple[int, int, int]) -> torch.Tensor:
    """Per-channel sensitivities (C,) -> diagonal map M (D, D), D = C * prod(patch), for the loss
    ||(pred - target) @ M||^2: channel c's squared error weighs w_c = (s_c / mean s) ** power, scaled so
    that mean(w) = 1. Token layout (c pt ph pw), as `spacetime_patchify` cuts it."""
    s = sensitivity.double().clamp(min=0)
    if s.dim() != 1 or not bool(s.sum() > 0):
        raise ValueError(f"sensitivity must be (C,) with a positive sum, got {sensitivity.tolist()}")
    w = (s / s.mean()).clamp(min=1e-8).pow(power)
    w = w / w.mean()
    per_dim = w.repeat_interleave(int(patch[0] * patch[1] * patch[2]))  # (D,)
    return torch.diag(per_dim.sqrt()).float()


def flow_loss(
    model,
    latents: Sequence[torch.Tensor],
    text_embeds: Sequence[torch.Tensor],
    cfg: FlowConfig,
    generator: torch.Generator | None = None,
    drop_rate: float = 0.0,
    loss_map: torch.Tensor | None = None,
    pixel_decoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    cond_frames: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified-flow loss of `model` on clean latents [(C, T_i, H_i, W_i)] with text [(L_i, D_text)].

    `cond_frames`, optional, one bool `(T_i,)` per sample: those latent frames are conditioning (image-to-
    video, extension): they stay clean in x_t, their tokens carry t = 0 and are left out of the loss. Each
    sample must keep at least one frame to denoise.

    A `cfg.text_drop_prob` fraction of samples (chosen at random) get zero-length text, so the model
    learns its null text token for classifier-free guidance. `drop_rate` is the NaViT token drop rate
    passed to `pack`; the velocity targets go through `pack_like`, so they drop the same tokens.
    `loss_map` (D_in, D_in), from `token_loss_map`: the error is measured as (pred - target) @ loss_map.
    `pixel_decoder` (latent (1, C, T, H, W) -> pixels, differentiable) with `cfg.pixel_weight` > 0 adds
    the pixel-space term (FlowConfig); it needs drop_rate 0 (a dropped token has no x0 prediction).
    Random draws, in order: timesteps, text-drop mask, noise, token drop, pixel-term samples; all from
    `generator`.

    Returns (loss scalar float32, per_sample (B,) float32): the latent loss of each sample; loss =
    per_sample.mean() plus the pixel term when it is on.
    """
    pixel_on = pixel_decoder is not None and cfg.pixel_weight > 0
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
    texts = [e[:0] if drop else e for e, drop in zip(text_embeds, drop_text.tolist())]
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
    extra = {} if per_token is None else {"token_timesteps": per_token}
    pred = model.forward_packed(packed, t.to(latents[0].device), **extra)  # (N, D_in)
    prediction = getattr(model.config, "prediction", "velocity")
    t_tok = t.to(pred.device)[packed.sample_id.to(pred.device)][:, None]  # (N, 1)
    x_t = packed.tokens.to(pred.device).float()
    if pixel_on:  # the x0 prediction, (N, D_in), for the pixel term
        x0_pred = pred.float() if prediction == "x0" else x_t - t_tok * pred.float()
    if prediction != "velocity":
        pred = to_velocity(pred.float(), x_t, t_tok, prediction)
    diff = pred.float() - target.float()  # (N, D_in)
    if loss_map is not None:
        diff = diff @ loss_map.to(diff.device)
    err = diff.pow(2).mean(dim=1)  # (N,)
    sample_id = packed.sample_id.to(err.device)
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
        errs.append(focused_mse(decoder(per_clip[i][None]), target, cfg.pixel_focus, cfg.focus_threshold,
                                cfg.focus_radius))
    return torch.stack(errs).mean()
