from dataclasses import dataclass, field

import pytest

from videodit.config import apply_overrides, load_config


@dataclass
class Inner:
    lr: float = 1e-4
    steps: int = 10
    name: str = "a"
    patch: tuple[int, int, int] = (1, 2, 2)


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    flag: bool = False
    path: str | None = None


def test_override_types_and_nesting():
    cfg = apply_overrides(Outer(), ["inner.lr=5e-4", "inner.steps=3", "flag=true", "inner.patch=[2,2,2]"])
    assert cfg.inner.lr == 5e-4 and cfg.inner.steps == 3 and cfg.flag is True
    assert cfg.inner.patch == (2, 2, 2)


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.nope=1", "unknown config key 'inner.nope'"),
        ("inner.steps=abc", "inner.steps: expected an integer"),
        ("inner.lr=fast", "inner.lr: expected a number"),
        ("flag=3", "flag: expected true/false"),
        ("inner.patch=[1,2]", "expected 3 values"),
        ("noequals", "must look like"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(Outer(), [override])


def test_yaml_partial_and_unknown(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("inner:\n  steps: 7\n")
    cfg = load_config(Outer, good, ["path=/x"])
    assert cfg.inner.steps == 7 and cfg.inner.lr == 1e-4 and cfg.path == "/x"
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner:\n  stepz: 7\n")
    with pytest.raises(ValueError, match="inner.stepz"):
        load_config(Outer, bad)


def test_int_keyed_mapping_survives_the_json_round_trip_of_overrides():
    import train_video

    cfg = load_config(train_video.RunConfig, None, ["data.cache=c", "data.size_weights={160: 1.0, 1280: 0.5}",
                                                    "train.lr=0.001"])
    assert cfg.data.size_weights == {160: 1.0, 1280: 0.5}
    with pytest.raises(ValueError, match="key"):
        load_config(train_video.RunConfig, None, ["data.cache=c", "data.size_weights={big: 1.0}"])
