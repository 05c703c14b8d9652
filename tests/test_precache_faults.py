"""data.precache under faults: a crash at every file operation leaves a cache the next run completes to
exactly the uninterrupted one; a rerun with other settings never mixes into an existing cache."""

import json
import pickle

import pytest
import torch
from faults import every_phase
from safetensors.torch import load_file
from test_data_fixtures import make_dataset, tiny_vae

from data.precache import LatentCache, main, precache
from data.sampling import SamplingConfig
from vae3d.io import load_vae

SAMPLING = SamplingConfig(min_tokens=4, max_tokens=16, max_frames=9)


class TinyText:
    """A stand-in text encoder (what precache uses of videodit.text_encoder.TextEncoder): a caption's
    states are a function of its characters."""

    max_length, path = 16, "tiny"

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 8)

    def encode(self, prompts):
        states = [self.model(torch.tensor([[float(ord(c)), i, 1.0] for i, c in enumerate(p[:16])]))
                  for p in prompts]
        return [s.detach() for s in states], None


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("precache")
    vae_dir = tiny_vae(root / "vae")
    encoders = (load_vae(str(vae_dir)).eval(), TinyText())
    manifests = {"a": make_dataset(root / "a", num_clips=2), "b": make_dataset(root / "b", num_clips=3,
                                                                                sizes=[(48, 48)])}
    return root, vae_dir, encoders, manifests


def contents(folder):
    index = json.loads((folder / "index.json").read_text())
    tensors = {}
    for shard in sorted(folder.glob("shard_*.safetensors")):
        tensors.update({f"{shard.stem}/{k}": v for k, v in load_file(shard).items()})
    return index["samples"], index["settings_hash"], tensors


def test_a_crash_at_every_step_is_completed_by_the_next_run(tmp_path, setup):
    root, _, (vae, te), manifests = setup
    reference = precache(manifests["a"], tmp_path / "ref", vae, te, SAMPLING, shard_size=1).parent
    want = contents(reference)
    out = tmp_path / "cache"
    phases = 0
    for _, what in every_phase(lambda: precache(manifests["a"], out, vae, te, SAMPLING, shard_size=1), out):
        phases += 1
        precache(manifests["a"], out, vae, te, SAMPLING, shard_size=1)  # the rerun completes it
        got = contents(out)
        assert got[:2] == want[:2], what
        assert got[2].keys() == want[2].keys() and all(torch.equal(got[2][k], want[2][k]) for k in want[2])
        assert not [p.name for p in out.iterdir() if ".tmp-" in p.name], what
        for p in out.iterdir():  # start the next attempt from an empty folder
            p.unlink()
    assert phases >= 6


def test_a_rerun_with_other_settings_is_refused_and_rebuild_replaces_the_cache(tmp_path, setup, capsys):
    """A rerun from another manifest (or other sampling, or another shard size) never reuses the old shards
    or rewrites the index over them."""
    root, vae_dir, (vae, te), manifests = setup
    out = tmp_path / "cache"
    precache(manifests["a"], out, vae, te, SAMPLING, shard_size=1)
    before = contents(out)
    with pytest.raises(ValueError, match=r"built with other settings \(manifest_rows differ\).*--rebuild"):
        precache(manifests["b"], out, vae, te, SAMPLING, shard_size=1)
    causal = SamplingConfig(min_tokens=4, max_tokens=16, max_frames=9, patch=(2, 2, 2), causal=True)
    with pytest.raises(ValueError, match=r"\(sampling differ\)"):
        precache(manifests["a"], out, vae, te, causal, shard_size=1)
    with pytest.raises(ValueError, match=r"\(shard_size differ\)"):
        precache(manifests["a"], out, vae, te, SAMPLING, shard_size=2)
    assert contents(out)[:2] == before[:2]  # untouched
    with pytest.raises(SystemExit) as exit_info:  # the command line: one line, status 2
        main(["--manifest", str(manifests["b"]), "--out", str(out), "--vae", str(vae_dir), "--min-tokens",
              "4", "--max-tokens", "16", "--max-frames", "9", "--shard-size", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("precache: error: ")
    precache(manifests["b"], out, vae, te, SAMPLING, shard_size=1, rebuild=True)
    samples, digest, _ = contents(out)
    assert [s["path"] for s in samples] == [str(manifests["b"].parent / f"clip{i}.mp4") for i in range(3)]
    assert digest != before[1] and len(LatentCache(out)) == 3
    shards = [json.loads(p.read_text()) for p in sorted(out.glob("shard_*.json"))]
    assert len(shards) == 3 and {s["settings_hash"] for s in shards} == {digest}


def test_an_index_that_is_not_json_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    (tmp_path / "index.json").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="is not a precache index"):
        LatentCache(tmp_path)
    assert not marker.exists()
