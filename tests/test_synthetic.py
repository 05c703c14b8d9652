import json
import re

import numpy as np
import pytest

from data.synthetic import (
    BACKGROUND_RGB,
    PALETTE,
    coverage,
    durations,
    eval_prompts,
    render_clip,
    render_dataset,
    resolutions,
    sample_spec,
    trajectory,
)
from videodit.mp4 import read_mp4
from videodit.world import (
    BACKGROUND_WORDS,
    BACKGROUNDS,
    COLOUR_WORDS,
    COLOURS,
    MOTION_ING,
    MOTION_VERB,
    MOTIONS,
    SHAPE_WORDS,
    SHAPES,
    TEMPLATES,
    heldout_combos,
    make_caption,
    parse_prompt,
    training_combos,
)


def _specs(n, seed=0):
    rng = np.random.default_rng(seed)
    combos = [(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS]
    sizes, frames = resolutions(), durations()
    return [sample_spec(rng, combos[i % len(combos)], BACKGROUNDS[i % 3], sizes, frames) for i in range(n)]


def test_heldout_combos_fixed_and_balanced():
    held = heldout_combos()
    assert held == heldout_combos() and len(set(held)) == 16  # ~11% of 144
    assert set(held).isdisjoint(training_combos()) and len(training_combos()) == 128
    for values, index in ((COLOURS, 0), (SHAPES, 1), (MOTIONS, 2)):
        assert {h[index] for h in held} == set(values)  # each value is held out somewhere...
        for v in values:  # ...and still trained with most of its partners
            assert sum(c[index] == v for c in training_combos()) >= 128 // len(values) - 6


def test_clip_geometry_size_and_travel():
    for spec in _specs(144 * 2):
        assert 0.10 - 1e-9 <= spec.size / min(spec.height, spec.width) <= 0.30 + 1e-9
        assert (spec.num_frames - 1) % 4 == 0 and spec.height % 16 == 0 and spec.width % 16 == 0
        path = trajectory(spec)  # (F, 2) (y, x)
        r = spec.size / 2
        assert (path[:, 0] >= r).all() and (path[:, 0] <= spec.height - r).all()  # inside the frame
        assert (path[:, 1] >= r).all() and (path[:, 1] <= spec.width - r).all()
        dy, dx = path[-1] - path[0]
        if spec.motion == "left":
            assert -dx >= spec.width / 4 and dy == 0
        elif spec.motion == "right":
            assert dx >= spec.width / 4 and dy == 0
        elif spec.motion == "up":
            assert -dy >= spec.height / 4 and dx == 0
        elif spec.motion == "down":
            assert dy >= spec.height / 4 and dx == 0
        elif spec.motion == "bouncing":
            assert abs(dy) < 1e-6 and np.ptp(path[:, 0]) >= spec.height / 4 and np.ptp(path[:, 1]) == 0
        else:
            assert np.ptp(path, axis=0).max() == 0


def test_coverage_areas_match_geometry():
    s = 20.0
    centre = np.asarray([[40.0, 40.0]])
    expected = {"circle": np.pi * s**2 / 4, "square": s**2, "triangle": s**2 / 2}
    for shape, area in expected.items():
        a = coverage(shape, s, centre, 80, 80)
        assert a.shape == (1, 80, 80)
        assert abs(a.sum() - area) / area < 0.02, shape


def test_rendered_colours_are_clean():
    spec = _specs(1)[0]
    clip = render_clip(spec)
    assert clip.shape == (spec.num_frames, spec.height, spec.width, 3) and clip.dtype == np.uint8
    colours = {tuple(p) for p in clip.reshape(-1, 3)}
    fg, bg = PALETTE[spec.colour], BACKGROUND_RGB[spec.background]
    assert fg in colours and bg in colours
    # every pixel is a blend of the two (anti-aliased edge), nothing else
    t = (clip.astype(float) - bg) @ (np.subtract(fg, bg)) / np.dot(np.subtract(fg, bg), np.subtract(fg, bg))
    recon = bg + t[..., None] * np.subtract(fg, bg)
    assert np.abs(recon - clip).max() <= 1.0


def test_captions_varied_and_parsed_back():
    rng = np.random.default_rng(0)
    captions = set()
    for colour, shape, motion in training_combos():
        for background in BACKGROUNDS:
            attrs = {"colour": colour, "shape": shape, "motion": motion, "background": background}
            for _ in range(2):
                text = make_caption(attrs, rng)
                captions.add(text)
                assert parse_prompt(text) == attrs, text
    assert len(captions) > 700  # 768 drawn: nearly all distinct
    skeletons = {re.sub(r"\w+", "w", c.lower()) for c in captions}
    assert len(skeletons) >= 12  # many sentence structures, not one template


@pytest.mark.parametrize("template", range(len(TEMPLATES)))
def test_parse_every_template_and_synonym(template):
    rng = np.random.default_rng(template)
    # every motion phrase of both forms appears with this template over enough draws
    for colour in COLOURS:
        for motion in MOTIONS:
            for shape in SHAPES:
                attrs = {"colour": colour, "shape": shape, "motion": motion,
                         "background": BACKGROUNDS[int(rng.integers(3))]}
                text = make_caption(attrs, rng, template=template)
                assert parse_prompt(text) == attrs, text


def test_parse_synonym_lists_directly():
    for name, words in COLOUR_WORDS.items():
        for w in words:
            assert parse_prompt(f"a {w} ball")["colour"] == name, w
    for name, words in SHAPE_WORDS.items():
        for w in words:
            assert parse_prompt(f"a red {w} falls")["shape"] == name, w
    for name, words in BACKGROUND_WORDS.items():
        for w in words:
            assert parse_prompt(f"a blue ball on a {w} background") == {
                "colour": "blue", "shape": "circle", "motion": None, "background": name}, w
    for table in (MOTION_VERB, MOTION_ING):
        for name, phrases in table.items():
            for phrase in phrases:
                assert parse_prompt(f"a cyan triangle {phrase}")["motion"] == name, phrase
    assert parse_prompt("crimson disk drifting leftward") == {
        "colour": "red", "shape": "circle", "motion": "left", "background": None}
    assert parse_prompt("something") == dict.fromkeys(("colour", "shape", "motion", "background"))


def test_make_caption_rejects_unknown_attribute():
    with pytest.raises(ValueError, match="colour must be one of"):
        make_caption({"colour": "pink", "shape": "circle", "motion": "up", "background": "navy"},
                     np.random.default_rng(0))


def test_dataset_manifests_and_files(tmp_path):
    summary = render_dataset(tmp_path, num=24, seed=3, num_heldout=6, max_size=64, max_frames=13,
                             num_prompts=10)
    assert summary["train"] == 24 and summary["heldout"] == 6
    train = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    heldout = set(heldout_combos())
    assert len(train) == 24 and len(held) == 6
    assert all((r["colour"], r["shape"], r["motion"]) not in heldout for r in train)
    assert all((r["colour"], r["shape"], r["motion"]) in heldout for r in held)
    assert len({(r["height"], r["width"]) for r in train}) > 1 and len({r["num_frames"] for r in train}) > 1
    for r in train[:4] + held[:2]:
        clip = read_mp4(tmp_path / r["path"])
        assert clip.shape == (r["num_frames"], r["height"], r["width"], 3)
        assert parse_prompt(r["caption"]) == {k: r[k] for k in ("colour", "shape", "motion", "background")}
    prompts = [json.loads(x) for x in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 10 and sum(p["heldout"] for p in prompts) == 5
    # determinism: same seed, same captions
    again = render_dataset(tmp_path / "again", num=24, seed=3, num_heldout=6, max_size=64, max_frames=13)
    assert again["train"] == 24
    assert (tmp_path / "again" / "train.jsonl").read_text() == (tmp_path / "train.jsonl").read_text()


def test_eval_prompts_split():
    prompts = eval_prompts(40, seed=5, heldout_fraction=0.5)
    held = set(heldout_combos())
    for p in prompts:
        assert ((p["colour"], p["shape"], p["motion"]) in held) == p["heldout"]
        assert parse_prompt(p["caption"])["colour"] == p["colour"]
    assert sum(p["heldout"] for p in prompts) == 20
    assert len({(p["colour"], p["shape"], p["motion"]) for p in prompts if p["heldout"]}) == 16


def test_resolution_and_duration_ranges():
    assert (48, 80) in resolutions() and (80, 48) in resolutions() and (48, 112) not in resolutions(48, 112)
    assert durations() == [9, 13, 17, 21, 25, 29, 33]
    with pytest.raises(ValueError, match="multiple of 16"):
        resolutions(50, 60)


# ---- natural-image clips (data/natural.py) ----


def test_natural_clips_split_and_camera_motion(tmp_path):
    from data.natural import HELDOUT_IMAGES, load_image, render_camera_clip, render_dataset, training_images

    assert set(HELDOUT_IMAGES).isdisjoint(training_images()) and len(training_images()) >= 8
    image = load_image("astronaut")
    rng = np.random.default_rng(0)
    still, _ = render_camera_clip(image, 48, 64, 9, "still", rng)
    assert still.shape == (9, 48, 64, 3) and (still == still[:1]).all()
    pan, phrase = render_camera_clip(image, 48, 64, 9, "pan", rng)
    assert phrase.startswith("camera panning")
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(pan[0].mean(-1), pan[-1].mean(-1), upsample_factor=4)
    travel = float(np.hypot(*shift)) / 48  # fraction of the shorter side over the clip
    assert 0.08 <= travel <= 0.33, travel  # PAN_TRAVEL is 0.1-0.3: slow, but it moves
    summary = render_dataset(tmp_path, num=5, seed=0, num_heldout=4, max_size=64, max_frames=9)
    assert summary["train"] == 5
    train = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    assert all(r["image"] not in HELDOUT_IMAGES for r in train)
    assert {r["image"] for r in held} == set(HELDOUT_IMAGES)
    clip = read_mp4(tmp_path / held[0]["path"])
    assert clip.shape == (held[0]["num_frames"], held[0]["height"], held[0]["width"], 3)
