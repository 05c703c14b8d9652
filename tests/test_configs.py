"""The committed configs: each loads into its trainer's config, and the recipe's stages chain together."""

from pathlib import Path

import pytest
import yaml

import train_vae
import train_video
from videodit.config import load_config
from videodit.model import DiT_sizes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(CONFIGS.rglob("*.yaml"))


def config_class(path: Path):
    return train_vae.VAETrainConfig if path.name.startswith("vae") else train_video.RunConfig


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(CONFIGS)) for p in ALL])
def test_every_config_loads(path):
    load_config(config_class(path), path)


@pytest.mark.parametrize("size", ["B", "L", "XL"])
def test_gpu_templates_are_the_named_sizes_with_zero_bf16_and_checkpointing(size):
    cfg = load_config(train_video.RunConfig, CONFIGS / f"dit_{size.lower()}.yaml")
    assert {k: getattr(cfg.model, k) for k in DiT_sizes[size]} == DiT_sizes[size]
    assert cfg.deepspeed.zero_stage in (2, 3) and cfg.deepspeed.precision == "bf16"
    assert cfg.model.grad_checkpointing


def test_recipe_stages_start_from_what_an_earlier_stage_writes():
    """Every init_from / data path of the recipe lies under runs/default/, and each init_from names the
    output of a stage that comes before it."""
    outputs = []
    for path in sorted((CONFIGS / "default").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        cfg = load_config(config_class(path), path)
        out, init = cfg.train.output_dir, cfg.train.init_from
        if isinstance(cfg, train_vae.VAETrainConfig):
            paths = [cfg.data.manifest, cfg.data.anchor_manifest]
        else:
            paths = [cfg.data.cache or cfg.data.manifest]
        assert all(p.startswith("runs/default/") for p in [out, *filter(None, paths)]), path.name
        if init:
            assert any(init.startswith(o + "/") for o in outputs), (path.name, init)
        outputs.append(out)
        assert "output_dir" in raw["train"]
