"""The repository's shape: the public API, the direction of imports, and what installing puts in
site-packages."""

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Imports run one way: a module may import from its own layer or an earlier one.
LAYERS = {"vae3d": 0, "videodit": 1, "data": 2, "generate": 3, "train_video": 3, "train_vae": 3, "bench": 4,
          "docs": 4}


def test_public_api_imports_from_the_packages():
    import vae3d
    import videodit
    from vae3d import CausalVAE3D, VAEConfig, load_vae, save_vae
    from videodit import (
        DiTConfig,
        Request,
        VideoDiT,
        VideoRequest,
        load_pipeline,
        pack,
        sample,
        sampling_settings,
        spacetime_patchify,
        spacetime_unpatchify,
        unpack,
    )
    from videodit.model import VideoDiT as ModelVideoDiT
    from videodit.sampling import sample as sampling_sample

    assert VideoDiT is ModelVideoDiT and sample is sampling_sample
    for f in (pack, unpack, spacetime_patchify, spacetime_unpatchify, load_pipeline, sampling_settings,
              load_vae, save_vae):
        assert callable(f)
    for cls in (DiTConfig, Request, VideoRequest, CausalVAE3D, VAEConfig):
        assert isinstance(cls, type)
    for name in videodit.__all__:
        assert getattr(videodit, name) is not None, name
    assert set(vae3d.__all__) <= set(dir(vae3d))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        videodit.nope  # noqa: B018


def test_importing_videodit_and_its_request_checks_pulls_in_no_torch():
    code = "import sys, videodit, videodit.video_request; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def imported_roots(source: str, own: str) -> set[str]:
    """Top-level names a module's source imports (anywhere in it); a relative import is its own package."""
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0] if node.level == 0 else own)
    return roots


def violations(source: str, own: str, name: str) -> list[str]:
    """What a module of layer `own` imports from a later layer, or from another entry point."""
    wrong = []
    for root in imported_roots(source, own):
        if root in LAYERS and LAYERS[root] > LAYERS[own]:
            wrong.append(f"{name} imports {root}")
        elif LAYERS.get(root) == 3 and root != own:
            wrong.append(f"{name} imports the entry point {root}")
    return wrong


def test_imports_run_one_way():
    """vae3d -> videodit -> data -> entry points -> bench: nothing imports a later layer."""
    checked, wrong = set(), []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if own in LAYERS:
            checked.add(own)
            wrong += violations(path.read_text(), own, str(rel))
    assert checked == set(LAYERS)
    assert not wrong, wrong


def test_the_layer_check_catches_wrong_imports():
    source = "import torch\nfrom data.loader import PackedLoader\nfrom . import model\n"
    assert imported_roots(source, "videodit") == {"torch", "data", "videodit"}
    assert violations(source, "videodit", "videodit/x.py") == ["videodit/x.py imports data"]
    assert violations("def f():\n    import generate\n", "bench", "bench/x.py") == \
        ["bench/x.py imports the entry point generate"]
    assert violations("from train_video import main\n", "train_vae", "train_vae.py") == \
        ["train_vae.py imports the entry point train_video"]
    assert violations("import vae3d\nimport videodit\n", "data", "data/x.py") == []


def test_the_wheel_claims_only_vae3d_and_videodit():
    """Installing puts no top-level `data` or `bench` into site-packages (the folders stay in the repo)."""
    from setuptools import find_packages

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py-modules" not in config
    find = config["packages"]["find"]
    packages = find_packages(where=str(REPO), include=find["include"], exclude=find.get("exclude", ()))
    assert {p.split(".")[0] for p in packages} == {"vae3d", "videodit"}
    assert {"videodit", "vae3d"} <= set(packages)
    assert importlib.util.find_spec("data") is not None  # still importable from the repository


@pytest.mark.slow
def test_a_built_wheel_holds_only_vae3d_and_videodit(tmp_path):
    import shutil
    import zipfile

    src = tmp_path / "src"  # built from a copy: setuptools writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "runs", "outputs",
                                                             "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True, timeout=600)
    wheel = next(tmp_path.glob("videodit-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith((".dist-info", ".data"))} == {"vae3d", "videodit"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "videodit/default/model.safetensors" in names and "vae3d/default/model.safetensors" in names
