"""bench.video_to_video: recolouring requests, their scoring, and a run through videodit.pipeline."""

import shutil

from bench import video_to_video
from data.synthetic import load_eval_prompts, render_eval_clip
from videodit.mp4 import write_mp4
from videodit.world import parse_prompt


def test_recolour_requests_and_scoring(tmp_path):
    rows = load_eval_prompts()[:6]
    reqs = video_to_video.recolour_requests(rows, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    for i, r in enumerate(reqs):
        assert r["target"]["colour"] != r["source"]["colour"]
        assert all(r["target"][k] == r["source"][k] for k in ("shape", "motion", "background"))
        assert parse_prompt(r["caption"])["colour"] == r["target"]["colour"]
        shutil.copy(r["init_video"], out / f"{i:04d}.mp4")  # "the model returned its input unchanged"
    same = video_to_video.score(reqs, out)
    assert same == {"new_colour": 0.0, "kept_shape": 100.0, "kept_motion": 100.0, "kept_background": 100.0,
                    "all": 0.0}
    for i, r in enumerate(reqs):  # the perfect answer: the same clip in the new colour
        write_mp4(out / f"{i:04d}.mp4", render_eval_clip(r["target"], 1000 + i), fps=8)
    assert video_to_video.score(reqs, out)["all"] == 100.0


def test_runs_through_the_pipeline_on_a_tiny_checkpoint(tiny_dit_ckpt, capsys):
    ckpt = tiny_dit_ckpt
    argv = ["--num", "2", "--strengths", "0.5", "1.0", "--steps", "2", "--ckpt", str(ckpt)]
    records = video_to_video.main(argv)
    assert [r["strength"] for r in records] == [0.5, 1.0]
    assert all(r["clips"] == 2 and 0 <= r["all"] <= 100 for r in records)
    assert capsys.readouterr().out.count('"bench": "video_to_video"') == 2
