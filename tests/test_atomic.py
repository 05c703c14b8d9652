"""vae3d.atomic and the model folders written through it: a crash at any file operation of a save leaves
the old content or the new, loadable, and the next save cleans up."""

import json
import shutil

import pytest
import torch
from faults import InjectedCrash, crash_at, every_phase

from vae3d import CausalVAE3D, VAEConfig
from vae3d.io import load_vae, save_vae
from videodit.checkpoint import load_dit, save_dit
from videodit.model import DiTConfig, VideoDiT


def _dit(seed: int) -> VideoDiT:
    torch.manual_seed(seed)
    return VideoDiT(DiTConfig(in_channels=4, hidden_size=24, depth=1, num_heads=2))


def test_write_text_is_old_or_new_after_a_crash_at_any_step(tmp_path):
    from vae3d.atomic import write_text

    target = tmp_path / "latest"
    write_text(target, "old")
    phases = 0
    for _, what in every_phase(lambda: write_text(target, "new"), tmp_path):
        phases += 1
        assert target.read_text() == "old", what
    assert phases >= 2 and target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]  # the crashed temporaries are gone


def test_save_dit_over_an_existing_folder_survives_a_crash_at_every_step(tmp_path):
    """A crash at any step, including between moving the old version out and the new one in, leaves a
    complete checkpoint at the stable name."""
    folder = tmp_path / "ema"
    old, new = _dit(0), _dit(1)
    save_dit(old, folder, {"step": 1})
    phases = 0
    for _, what in every_phase(lambda: save_dit(new, folder, {"step": 2}), tmp_path):
        phases += 1
        model, meta = load_dit(folder)  # always a complete checkpoint, old or new
        expected = old if meta["step"] == 1 else new
        for (name, a), b in zip(model.state_dict().items(), expected.state_dict().values()):
            assert torch.equal(a, b), (what, name)
        save_dit(old, folder, {"step": 1})  # the next attempt starts from the old checkpoint again
    assert phases >= 4
    assert load_dit(folder)[1]["step"] == 2
    visible = sorted(p.name for p in tmp_path.iterdir())
    assert visible == sorted(["ema", folder.resolve().name])  # one version, no temporaries


def test_save_vae_over_an_existing_folder_survives_a_crash_at_every_step(tmp_path):
    folder = tmp_path / "vae"
    cfg = VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1))
    torch.manual_seed(0)
    models = {1: CausalVAE3D(cfg), 2: CausalVAE3D(cfg)}
    save_vae(models[1], folder, {"v": 1})
    for _, what in every_phase(lambda: save_vae(models[2], folder, {"v": 2}), tmp_path):
        version = json.loads((folder / "config.json").read_text())["meta"]["v"]
        for (name, a), b in zip(load_vae(folder).state_dict().items(), models[version].state_dict().values()):
            assert torch.equal(a, b), (what, name)
        save_vae(models[1], folder, {"v": 1})


def test_a_plain_folder_becomes_a_pointer_and_a_kill_in_between_is_repaired_on_load(tmp_path):
    """A folder written before pointers existed is moved aside, then pointed at: a kill between the two
    leaves the stable name missing for a moment, which the next load repairs."""
    saved = save_dit(_dit(0), tmp_path / "saved", {"step": 1})
    folder = tmp_path / "ck"
    for n in range(1, 20):
        if folder.exists() or folder.is_symlink():
            folder.unlink() if folder.is_symlink() else shutil.rmtree(folder)
        for version in tmp_path.glob(".ck.*"):
            shutil.rmtree(version)
        shutil.copytree(saved.resolve(), folder)  # a plain folder
        with pytest.raises(InjectedCrash), crash_at(n, folder.parent / "ck"):
            save_dit(_dit(1), folder, {"step": 2})
        if not folder.exists():
            break
    assert not folder.exists() and list(tmp_path.glob(".ck.v-*"))
    _, meta = load_dit(folder)  # repaired: the stable name points at the newest complete version
    assert meta["step"] in (1, 2) and folder.is_symlink()


def test_replace_folder_leaves_the_old_content_on_an_error_and_refuses_a_file(tmp_path):
    from vae3d.atomic import recover_folder, replace_folder

    folder = tmp_path / "f"
    with replace_folder(folder) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), replace_folder(folder) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("boom")
    assert (folder / "a").read_text() == "1"
    assert recover_folder(folder) == folder.resolve()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"), replace_folder(tmp_path / "file"):
        pass
