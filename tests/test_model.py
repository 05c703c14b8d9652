import pytest
import torch

from videodit.attention import available_backends
from videodit.model import DiT_models, DiTConfig, VideoDiT, dit_config
from videodit.packing import pack, plan_rows
from videodit.rope import fractional_positions, rope_cos_sin

TEXT_DIM = 12


def tiny(**kw) -> VideoDiT:
    cfg = DiTConfig(in_channels=4, text_dim=TEXT_DIM, hidden_size=48, depth=2, num_heads=4, **kw)
    return VideoDiT(cfg)


def perturb(model: VideoDiT, scale: float = 0.1) -> VideoDiT:
    """Move every weight off its (partly zero) init so outputs and gradients are non-trivial."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def samples():
    latents = [
        torch.randn(4, 3, 6, 8),
        torch.randn(4, 1, 5, 7),
        torch.randn(4, 2, 4, 4),
        torch.randn(4, 1, 4, 4),
    ]
    texts = [
        torch.randn(5, TEXT_DIM),
        torch.randn(0, TEXT_DIM),
        torch.randn(3, TEXT_DIM),
        torch.randn(3, TEXT_DIM),
    ]
    t = torch.tensor([0.1, 0.5, 0.9, 0.3])
    return latents, t, texts


def test_fresh_model_outputs_zeros():
    latents, t, texts = samples()
    out = tiny().forward_samples(latents, t, texts)
    assert [o.shape for o in out] == [z.shape for z in latents]
    assert all(o.abs().max() == 0 for o in out)


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("rope,patch,causal", [("integer", (1, 2, 2), False),
                                               ("fractional", (1, 2, 2), False),
                                               ("fractional", (2, 2, 2), True)])
def test_prediction_same_alone_or_packed(backend, rope, patch, causal):
    model = perturb(tiny(attention=backend, rope=rope, patch=patch, causal_tubelet=causal)).eval()
    latents, t, texts = samples()
    with torch.no_grad():
        packed = model.forward_samples(latents, t, texts)
        assert max(o.abs().max() for o in packed) > 1e-2  # non-trivial outputs
        for i in range(len(latents)):
            alone = model.forward_samples([latents[i]], t[i : i + 1], [texts[i]])[0]
            assert (alone - packed[i]).abs().max() <= 1e-5
        # and in a different order / company
        order = [3, 1, 0]
        other = model.forward_samples([latents[j] for j in order], t[order], [texts[j] for j in order])
        for j, o in zip(order, other):
            assert (o - packed[j]).abs().max() <= 1e-5


def test_each_sample_uses_its_own_timestep_and_text():
    model = perturb(tiny()).eval()
    latents, t, texts = samples()
    with torch.no_grad():
        base = model.forward_samples(latents, t, texts)
        t2 = t.clone()
        t2[0] = 0.99
        texts2 = list(texts)
        texts2[2] = torch.randn(3, TEXT_DIM)
        moved = model.forward_samples(latents, t2, texts2)
    assert (moved[0] - base[0]).abs().max() > 1e-3 and (moved[2] - base[2]).abs().max() > 1e-3
    assert (moved[1] - base[1]).abs().max() <= 1e-6 and (moved[3] - base[3]).abs().max() <= 1e-6


def test_gradients_reach_every_parameter():
    model = perturb(tiny()).train()
    latents, t, texts = samples()  # sample 1 has no text, so the null token is used
    out = model.forward_samples(latents, t, texts)
    sum(o.square().mean() for o in out).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert missing == []


def test_gradient_checkpointing_gives_the_same_gradients():
    latents, t, texts = samples()
    grads = []
    reference = perturb(tiny()).state_dict()
    for ckpt in (False, True):
        model = tiny(grad_checkpointing=ckpt).train()
        model.load_state_dict(reference)
        packed = pack(latents, texts, model.config.patch)
        model.forward_packed(packed, t).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_rope_does_not_depend_on_place_in_the_row():
    latents, _, texts = samples()
    alone = pack([latents[2]], [texts[2]], (1, 2, 2))
    row = pack(latents, texts, (1, 2, 2))
    s, e = row.cu_seqlens[2].item(), row.cu_seqlens[3].item()
    for ref in [(0, 0, 0), (0, 32, 32), (8, 16, 16)]:
        pa = fractional_positions(alone.pos, alone.sample_id, alone.grids, ref)
        pr = fractional_positions(row.pos, row.sample_id, row.grids, ref)
        ca, sa = rope_cos_sin(pa, 16)
        cr, sr = rope_cos_sin(pr, 16)
        assert torch.equal(ca, cr[s:e]) and torch.equal(sa, sr[s:e])


def test_fractional_positions_span_the_reference_grid():
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 3.0, 7.0]])
    out = fractional_positions(pos, torch.tensor([0, 1]), [(2, 4, 8), (2, 4, 8)], (0, 32, 32))
    assert out.tolist() == [[0, 0, 0], [1, 24, 28]]  # time stays integer, h and w scale by 32/4, 32/8


def test_bf16_forward_is_finite_smoke():
    model = perturb(tiny()).to(torch.bfloat16).eval()
    latents, t, texts = samples()
    with torch.no_grad():
        out = model.forward_samples([z.bfloat16() for z in latents], t, [e.bfloat16() for e in texts])
    assert all(o.dtype == torch.bfloat16 and torch.isfinite(o).all() for o in out)


def test_model_sizes_table():
    assert set(DiT_models) == {"XS", "S", "B", "L", "XL"}
    assert dit_config("B").hidden_size == 768
    with pytest.raises(ValueError, match="unknown DiT size 'Q'"):
        dit_config("Q")


def test_bad_input_errors_name_the_problem():
    model = tiny()
    latents, t, texts = samples()
    with pytest.raises(ValueError, match="empty sample list"):
        model.forward_samples([], t[:0], [])
    with pytest.raises(ValueError, match="mismatched channels: latent 0 has shape"):
        model.forward_samples([torch.randn(3, 1, 4, 4)], t[:1], texts[:1])
    with pytest.raises(
        ValueError, match=f"text dim mismatch: text embeddings have dim 7, .*text_dim={TEXT_DIM}"
    ):
        model.forward_samples(latents[:1], t[:1], [torch.randn(2, 7)])
    with pytest.raises(ValueError, match=r"timesteps must have shape \(4,\)"):
        model.forward_samples(latents, t[:2], texts)
    with pytest.raises(ValueError, match="more than the row token budget 16"):
        plan_rows([12, 20], budget=16)
    with pytest.raises(ValueError, match="hidden_size 50 is not divisible by num_heads 4"):
        DiTConfig(hidden_size=50)
    with pytest.raises(ValueError, match="even head dim >= 6"):
        DiTConfig(hidden_size=12, num_heads=4)


def test_null_text_is_in_every_graph():
    """Data-parallel ranks must reduce the same parameters whether or not a row has text dropped."""
    from videodit.model import DiTConfig, VideoDiT

    model = VideoDiT(DiTConfig(in_channels=4, hidden_size=24, depth=1, num_heads=2))
    for p in model.parameters():
        p.data.normal_(std=0.1)
    out = model.forward_samples([torch.randn(4, 2, 4, 4)], torch.tensor([0.5]), [torch.randn(3, 384)])
    out[0].sum().backward()
    assert model.null_text.grad is not None


def test_skip_blocks_make_named_blocks_identity_for_that_sample_only():
    cfg = DiTConfig(in_channels=4, text_dim=TEXT_DIM, hidden_size=48, depth=3, num_heads=4)
    model = perturb(VideoDiT(cfg)).eval()
    latents, t, texts = samples()
    skips = [frozenset(), frozenset({1}), frozenset({0, 2}), frozenset()]
    with torch.no_grad():
        plain = model.forward_samples(latents, t, texts)
        got = model.forward_samples(latents, t, texts, skip_blocks=skips)
        for i, skip in enumerate(skips):
            blocks = model.blocks
            model.blocks = torch.nn.ModuleList([b for k, b in enumerate(blocks) if k not in skip])
            want = model.forward_samples([latents[i]], t[i : i + 1], [texts[i]])[0]
            model.blocks = blocks
            torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)
            assert (got[i] - plain[i]).abs().max() > 1e-3 if skip else torch.equal(got[i], plain[i])
    with pytest.raises(ValueError, match="block 3"):
        model.forward_samples(latents, t, texts, skip_blocks=[frozenset({3})] * 4)
    with pytest.raises(ValueError, match="entries"):
        model.forward_samples(latents, t, texts, skip_blocks=[frozenset()])


def test_causal_model_refuses_a_batch_packed_without_its_tubelet():
    model = perturb(tiny(patch=(2, 2, 2), causal_tubelet=True)).eval()
    z = torch.randn(4, 3, 4, 4)
    text = [torch.randn(2, TEXT_DIM)]
    with torch.no_grad():
        out = model.forward_samples([z], torch.tensor([0.4]), text)[0]
        assert out.shape == z.shape
        with pytest.raises(ValueError, match="causal"):
            model.forward_packed(pack([z], text, (2, 2, 2)), torch.tensor([0.4]))


def test_frame_timesteps_equal_to_the_sample_timestep_change_nothing():
    model = perturb(tiny(patch=(2, 2, 2), causal_tubelet=True)).eval()
    latents, t, texts = samples()
    frames = [torch.full((z.shape[1],), float(ti)) for z, ti in zip(latents, t)]
    with torch.no_grad():
        plain = model.forward_samples(latents, t, texts)
        per_frame = model.forward_samples(latents, t, texts, frame_timesteps=frames)
    for a, b in zip(plain, per_frame):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_conditioning_frames_at_t0_packed_with_other_tasks_match_alone():
    """Mixed tasks in one row (t2v, first frame clean, first two groups clean): each sample's prediction is
    the same as run alone, and the clean frame changes its sample's output."""
    model = perturb(tiny(patch=(2, 2, 2), causal_tubelet=True)).eval()
    latents = [torch.randn(4, 5, 4, 6), torch.randn(4, 3, 6, 4), torch.randn(4, 5, 4, 4)]
    texts = [torch.randn(3, TEXT_DIM) for _ in latents]
    t = torch.tensor([0.7, 0.4, 0.9])
    frames = [torch.full((5,), 0.7), torch.tensor([0.0, 0.4, 0.4]), torch.tensor([0.0, 0.0, 0.0, 0.9, 0.9])]
    with torch.no_grad():
        packed = model.forward_samples(latents, t, texts, frame_timesteps=frames)
        for i in range(3):
            alone = model.forward_samples([latents[i]], t[i : i + 1], [texts[i]], frame_timesteps=[frames[i]])
            assert (alone[0] - packed[i]).abs().max() <= 1e-5
        uncond = model.forward_samples(latents[1:2], t[1:2], texts[1:2])[0]
        assert (uncond - packed[1]).abs().max() > 1e-4


def test_modulation_is_computed_once_per_distinct_sample_and_timestep():
    model = perturb(tiny(patch=(2, 2, 2), causal_tubelet=True)).eval()
    rows = []
    model.t_embedder.register_forward_hook(lambda m, inp, out: rows.append(inp[0].shape[0]))
    latents = [torch.randn(4, 5, 4, 4), torch.randn(4, 5, 4, 4)]
    frames = [torch.tensor([0.0, 0.5, 0.5, 0.5, 0.5]), torch.full((5,), 0.5)]
    with torch.no_grad():
        model.forward_samples(latents, torch.tensor([0.5, 0.5]), [torch.randn(2, TEXT_DIM)] * 2,
                              frame_timesteps=frames)
    assert rows == [3]  # (0, 0.0), (0, 0.5), (1, 0.5), not one per token


def test_frames_sharing_a_token_must_share_a_timestep():
    model = tiny(patch=(2, 2, 2), causal_tubelet=True)
    with pytest.raises(ValueError, match="share a token group"):
        model.forward_samples([torch.randn(4, 5, 4, 4)], torch.tensor([0.5]), [torch.randn(2, TEXT_DIM)],
                              frame_timesteps=[torch.tensor([0.0, 0.0, 0.5, 0.5, 0.5])])
