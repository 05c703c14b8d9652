import json

import pytest

from data.mix import mix, parse_source


def _manifest(path, names):
    path.write_text("".join(json.dumps({"path": n, "caption": f"cap {n}"}) + "\n" for n in names))
    return str(path)


def test_parse_source():
    assert parse_source("a/b.jsonl") == ("a/b.jsonl", 1)
    assert parse_source("a/b.jsonl:3") == ("a/b.jsonl", 3)
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        parse_source("a.jsonl:0")


def test_mix_repeats_resolves_and_is_seeded(tmp_path):
    (tmp_path / "x").mkdir()
    a = _manifest(tmp_path / "x" / "a.jsonl", ["1.mp4", "2.mp4"])
    b = _manifest(tmp_path / "b.jsonl", ["3.mp4"])
    out = mix([(a, 1), (b, 3)], seed=5)
    paths = sorted(e.path for e in out)
    assert paths == sorted([str(tmp_path / "x" / "1.mp4"), str(tmp_path / "x" / "2.mp4")]
                           + [str(tmp_path / "3.mp4")] * 3)
    assert [e.path for e in mix([(a, 1), (b, 3)], seed=5)] == [e.path for e in out]
    with pytest.raises(ValueError, match="at least one"):
        mix([])
