"""videodit.budget: token counts agree with the patchifier, the memory arithmetic, and the estimate against
the peak resident memory generate.py really reaches (measured in a subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from videodit import budget
from videodit.footprint import footprint
from videodit.patchify import patch_grid
from videodit.video_request import latent_shape

REPO = Path(__file__).resolve().parents[1]


def test_tokens_and_latent_size_agree_with_the_patchifier():
    vae = budget.VAEShape(4, 8, 1.0, 1.0)
    for frames, h, w in ((1, 16, 16), (5, 33, 47), (17, 128, 160), (64, 720, 1280), (2, 8, 9)):
        size = budget.latent_size(frames, h, w, vae)
        assert size == latent_shape(frames, h, w, 4, 8)
        for patch in ((1, 2, 2), (2, 4, 4), (3, 1, 2)):
            for causal in (False, True):
                dit = budget.DiTShape(64, 256, patch, causal)
                t, gh, gw = patch_grid(size, patch, causal)
                assert budget.latent_tokens(size, dit) == t * gh * gw


def test_arithmetic_of_a_request_and_a_pass():
    dit = budget.DiTShape(hidden_size=256, mlp_width=1024, patch=(1, 2, 2))
    vae = budget.VAEShape(4, 8, pixel_bytes=100.0, single_frame_pixel_bytes=300.0, tile=0)
    fp = budget.Footprint(weight_bytes=10 * 2**20, dit=dit, vae=vae)
    tokens, need = budget.request_tokens_and_bytes(1, 64, 64, fp, guided=True)
    assert tokens == 2 * 4 * 4 * 1
    decode = 1 * (64 * 64 * 300 + 64 * 64 * budget.OUTPUT_PIXEL_BYTES)
    passing = tokens * dit.token_bytes
    assert need == budget.BASE_BYTES + fp.weight_bytes + decode + int(budget.RETAINED * passing)
    tokens3, _ = budget.request_tokens_and_bytes(1, 64, 64, fp, guided=True, skip_pass=True)
    assert tokens3 == 3 * 16 and budget.request_tokens_and_bytes(1, 64, 64, fp, guided=False)[0] == 16
    free = budget.BASE_BYTES + fp.weight_bytes + 1000 * dit.token_bytes
    assert budget.pass_token_budget(fp, free) == 1000
    assert budget.pass_token_budget(fp, 0) == 1
    half = budget.Footprint(fp.weight_bytes, dit, vae, dtype_bytes=2)
    assert budget.pass_token_budget(half, free) == 2000


def test_available_memory_and_the_refusal_message(monkeypatch):
    assert budget.available_memory_bytes(2.5) == int(2.5 * 2**30)
    meminfo = dict(line.split(":") for line in open("/proc/meminfo").read().splitlines())
    assert abs(budget.available_memory_bytes() - int(meminfo["MemAvailable"].split()[0]) * 1024) < 2**30
    for bad in (0, -1, float("nan"), float("inf"), "4"):
        with pytest.raises(ValueError, match="max memory must be a number of GiB > 0"):
            budget.available_memory_bytes(bad)
    budget.check_fits(2**30, 2**31, "x")
    with pytest.raises(ValueError, match=r"the clip needs about 3\.0 GiB of memory, more than the 2\.0 GiB"):
        budget.check_fits(3 * 2**30, 2 * 2**30, "the clip")


def test_the_design_card_request_fits_this_machine_with_the_embedded_model():
    """`generate.py --frames 64 --res 720x1280` with the embedded default: estimated, not refused."""
    fp, meta = footprint("default")
    guided = (meta.get("sampling") or {}).get("cfg", 5.0) != 1.0
    tokens, need = budget.request_tokens_and_bytes(64, 720, 1280, fp, guided)
    assert tokens == 2 * 9 * 23 * 40  # latent 17 x 90 x 160 in (2, 4, 4) tubelets, CFG's two branches
    assert 1 * 2**30 < need < 4 * 2**30
    budget.check_fits(need, budget.available_memory_bytes(), "the design card command")


def measured_peak(argv: list[str], tmp_path: Path) -> int:
    """Peak resident bytes of `generate.py argv` run in a fresh process: its VmHWM (ru_maxrss would also
    count the pytest process it was forked from)."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['generate.py', *{argv!r}]\n"
            "try:\n    runpy.run_path('generate.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0]\n"
            "print('PEAK', hwm.split()[1])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split("PEAK")[-1]) * 1024  # kB


def _check_estimate(frames: int, res: str, tmp_path: Path) -> dict:
    h, w = map(int, res.split("x"))
    fp, _ = footprint("default")
    _, estimate = budget.request_tokens_and_bytes(frames, h, w, fp)
    peak = measured_peak(["--prompt", "a red ball", "--frames", str(frames), "--res", res, "--steps", "1",
                          "--out", str(tmp_path / "v.mp4")], tmp_path)
    record = {"shape": [frames, h, w], "estimate_mib": estimate // 2**20, "measured_mib": peak // 2**20,
              "ratio": round(estimate / peak, 3)}
    print(json.dumps(record))
    assert 0.7 <= estimate / peak <= 1.3, record
    return record


@pytest.mark.slow  # a peak-RSS measurement: run on a quiet machine (one full-suite run read 52% more)
def test_the_estimate_is_within_30_percent_of_the_measured_peak_small(tmp_path):
    _check_estimate(1, "256x256", tmp_path)


@pytest.mark.slow
def test_the_estimate_is_within_30_percent_of_the_measured_peak_design_card(tmp_path):
    """The design card command, one sampling step (the peak does not depend on the step count): minutes."""
    _check_estimate(64, "720x1280", tmp_path)
