"""videodit.video_request: resolutions, latent sizes, crops, prompts files -> requests."""

from pathlib import Path

import pytest

from videodit.video_request import (
    DEFAULT_STRENGTH,
    crop_box,
    latent_shape,
    parse_prompts_file,
    parse_resolution,
    requests_from_items,
)


def test_parse_resolution():
    assert parse_resolution("720x1280") == (720, 1280)
    assert parse_resolution("200X360") == (200, 360)
    for bad in ("abc", "0x128", "128x0", "12x", "-5x10", "1.5x2", "99999x10"):
        with pytest.raises(ValueError, match="resolution"):
            parse_resolution(bad)


def test_latent_shape_covers_request():
    assert latent_shape(1, 200, 360, 4, 8) == (1, 25, 45)
    assert latent_shape(64, 720, 1280, 4, 8) == (17, 90, 160)
    assert latent_shape(2, 201, 359, 4, 8) == (2, 26, 45)
    assert latent_shape(5, 16, 16, 4, 16) == (2, 1, 1)
    with pytest.raises(ValueError):
        latent_shape(0, 16, 16, 4, 8)


def test_crop_box_is_centred():
    rows, cols = crop_box((208, 368), (200, 360))
    assert (rows.start, rows.stop, cols.start, cols.stop) == (4, 204, 4, 364)


def test_parse_prompts_file():
    text = '{"prompt": "a dog"}\n\n'
    text += '{"prompt": "a cat", "frames": 9, "res": "33x47", "seed": 4, "negative_prompt": "x"}\n'
    items = parse_prompts_file(text, "p.jsonl")
    assert items == [
        {"prompt": "a dog"},
        {"prompt": "a cat", "frames": 9, "res": "33x47", "seed": 4, "negative_prompt": "x"},
    ]
    bad = {
        '{"prompt": "ok"}\n{"prompt": "a", "frames": 0}': "p.jsonl:2: frames",
        '{"prompt": "ok"}\n{"prompt": "a"\n': "p.jsonl:2: not valid JSON",
        '{"prompt": "ok"}\n\n["a"]': "p.jsonl:3: expected a JSON object",
        '{"prompt": ""}': "p.jsonl:1: 'prompt'",
        '{"prompt": "a", "res": "abc"}': "p.jsonl:1: resolution 'abc'",
        '{"prompt": "a", "steps": 3}': "p.jsonl:1: unknown key",
        '{"prompt": "a", "seed": -2}': "p.jsonl:1: seed",
        '{"prompt": "a", "frames": true}': "p.jsonl:1: frames",
        '{"prompt": "a", "strength": 0}': "p.jsonl:1: strength",
        '{"prompt": "a", "strength": 1.5}': "p.jsonl:1: strength",
        '{"prompt": "a", "init_video": "/no/such/clip.mp4"}': "p.jsonl:1: init video '/no/such/clip.mp4'",
        '{"prompt": "a", "init_video": 3}': "p.jsonl:1: init video must be a file path",
        "\n\n": "no requests",
    }
    for text, message in bad.items():
        with pytest.raises(ValueError, match=message):
            parse_prompts_file(text, "p.jsonl")


def test_requests_from_items_fill_what_a_line_leaves_out(tmp_path):
    clip = tmp_path / "in.mp4"
    clip.write_bytes(b"x")
    items = [{"prompt": "a"}, {"prompt": "b", "frames": 3, "res": "8x16", "seed": 9, "init_video": str(clip)},
             {"prompt": "c", "negative_prompt": "", "init_video": str(clip), "strength": 0.3}]
    reqs = requests_from_items(items, tmp_path / "o", 5, 32, 48, 100, negative_prompt="blur")
    assert [(r.prompt, r.frames, r.height, r.width, r.seed) for r in reqs] == \
        [("a", 5, 32, 48, 100), ("b", 3, 8, 16, 9), ("c", 5, 32, 48, 102)]
    assert [r.out for r in reqs] == [tmp_path / "o" / f"{i:04d}.mp4" for i in range(3)]
    assert [r.negative_prompt for r in reqs] == ["blur", "blur", ""]
    assert [r.init_video for r in reqs] == [None, Path(clip), Path(clip)]
    assert [r.strength for r in reqs] == [1.0, DEFAULT_STRENGTH, 0.3]
    with pytest.raises(ValueError, match="request 2 \\(0001.mp4\\) has a strength but no init_video"):
        requests_from_items([{"prompt": "a"}, {"prompt": "b", "strength": 0.5}], tmp_path, 5, 8, 8, 0)
    with pytest.raises(ValueError, match="--strength needs --init-video or requests with init_video"):
        requests_from_items([{"prompt": "a"}], tmp_path, 5, 8, 8, 0, strength=0.5)
