"""videodit.serve against the real `openai` SDK and raw HTTP, on tiny random checkpoints (2 steps): the
SDK's videos methods, the mp4 it gets back, bad input and load (each a 4xx, the server keeps serving),
server-sent events, restarts, paths confined to the input folder, the API key, and the batcher's promise
that a job's latents do not depend on what it shared steps with."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
import torch
from PIL import Image

from vae3d.config import VAEConfig
from vae3d.io import save_vae
from vae3d.model import CausalVAE3D
from videodit.checkpoint import save_dit
from videodit.model import DiTConfig, VideoDiT
from videodit.mp4 import read_mp4, write_mp4
from videodit.pipeline import load_pipeline
from videodit.serve.app import ServeConfig
from videodit.serve.server import Server

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
REPO = Path(__file__).resolve().parents[1]


def _checkpoint(root: Path, patch=(1, 2, 2), causal=False, tasks=("t2v",)) -> Path:
    torch.manual_seed(0)
    vae_cfg = VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1))
    vae = save_vae(CausalVAE3D(vae_cfg), root / "vae")
    dit = VideoDiT(DiTConfig(in_channels=4, text_dim=384, hidden_size=24, depth=1, num_heads=2, patch=patch,
                             causal_tubelet=causal))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # off the zero init, so that outputs depend on every input
        for p in dit.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    meta = {"vae": str(vae), "text_encoder": "default", "flow": {"max_tokens": 4096},
            "sampling": {"steps": 2, "cfg": 2.0}, "tasks": list(tasks)}
    return save_dit(dit, root / "dit", meta)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load_pipeline(str(_checkpoint(tmp_path_factory.mktemp("tiny"))))


@pytest.fixture(scope="module")
def pipe_pt2(tmp_path_factory):
    """A tubelet of 2 latent frames without the causal first token: it cannot keep a first frame."""
    return load_pipeline(str(_checkpoint(tmp_path_factory.mktemp("pt2"), patch=(2, 2, 2))))


@contextmanager
def serving(pipe, out: Path, batcher: bool = True, **config):
    server = Server(pipe, ServeConfig(out=out, **config))
    url = server.start(batcher=batcher)
    try:
        yield server, url
    finally:
        server.stop()


def sdk(url: str, key: str = "local"):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def wait(client, video_id: str, timeout: float = 120.0):
    end = time.time() + timeout
    while time.time() < end:
        video = client.videos.retrieve(video_id)
        if video.status in ("completed", "failed"):
            return video
        time.sleep(0.05)
    raise AssertionError(f"{video_id} did not finish in {timeout} s")


def png_bytes(seed: int = 0, size=(24, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_sdk_creates_polls_downloads_lists_remixes_and_deletes(pipe, tmp_path):
    with serving(pipe, tmp_path / "out") as (_, url):
        client = sdk(url)
        a = client.videos.create(prompt="a red ball", size="48x32", seconds="1", extra_body={"seed": 3})
        b = client.videos.create(prompt="a blue cube", extra_body={"frames": 9, "res": "16x24", "steps": 3})
        assert (a.object, a.status, a.size, a.seconds) == ("video", "queued", "48x32", "1")
        assert a.model == "videodit" and a.queue_position == 0
        a, b = wait(client, a.id), wait(client, b.id)
        assert (a.status, a.progress, b.status) == ("completed", 100, "completed") and a.completed_at
        assert (b.size, b.seconds) == ("24x16", "0.5625")  # 9 frames at 16 fps
        path = tmp_path / "a.mp4"
        client.videos.download_content(a.id).write_to_file(path)
        assert read_mp4(path).shape == (16, 32, 48, 3)  # 1 s at 16 fps, 48 wide, 32 high
        client.videos.download_content(b.id).write_to_file(path)
        assert read_mp4(path).shape == (9, 16, 24, 3)
        thumb = client.videos.download_content(a.id, variant="thumbnail").content
        assert Image.open(io.BytesIO(thumb)).size == (48, 32)

        page = client.videos.list(limit=1, order="asc")
        assert [v.id for v in page.data] == [a.id] and page.has_more and page.last_id == a.id
        assert [v.id for v in client.videos.list(order="desc").data] == [b.id, a.id]
        assert [v.id for v in client.videos.list(after=a.id, order="asc").data] == [b.id]
        assert [v.id for v in client.videos.list(limit=1, order="asc")] == [a.id, b.id]

        remix = client.videos.remix(a.id, prompt="a green ball", extra_body={"strength": 0.5})
        assert remix.remixed_from_video_id == a.id
        assert (remix.size, remix.seconds, remix.seed) == ("48x32", "1", 3)
        assert wait(client, remix.id).status == "completed"
        client.videos.download_content(remix.id).write_to_file(path)
        assert read_mp4(path).shape == (16, 32, 48, 3)

        gone = client.videos.delete(a.id)
        assert (gone.id, gone.object, gone.deleted) == (a.id, "video.deleted", True)
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(a.id)
        with pytest.raises(openai.NotFoundError):
            client.videos.download_content(a.id)
        assert not (tmp_path / "out" / f"{a.id}.mp4").exists()
        assert wait(client, remix.id).status == "completed"  # a remix keeps its own copy of its source


def test_cancelling_queued_and_running_jobs(pipe, tmp_path):
    with serving(pipe, tmp_path / "out", batcher=False) as (server, url):
        client = sdk(url)
        queued = client.videos.create(prompt="never run", size="16x16")
        running = client.videos.create(prompt="stopped midway", size="16x16", extra_body={"steps": 50})
        assert client.videos.retrieve(running.id).queue_position == 1
        assert client.videos.delete(queued.id).deleted
        assert client.videos.retrieve(running.id).queue_position == 0
        server.batcher.tick()
        assert client.videos.retrieve(running.id).status == "in_progress"
        client.videos.delete(running.id)
        server.batcher.tick()
        assert server.batcher.running == [] and client.videos.list().data == []
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["jobs", "uploads"]
        assert list((tmp_path / "out" / "jobs").iterdir()) == []


BAD = [  # (content, expected status, words in the message)
    ({"json": {"prompt": "a", "frames": 0}}, 400, "frames must be a positive integer"),
    ({"json": {"prompt": "a", "res": "0x128"}}, 400, "height and width must be in [1, 8192]"),
    ({"json": {"prompt": "a", "size": "128"}}, 400, "WIDTHxHEIGHT"),
    ({"json": {"prompt": "a", "seconds": "-1"}}, 400, "seconds must be a number in (0"),
    ({"json": {"prompt": "a", "seconds": "1", "frames": 16}}, 400, "give seconds or frames, not both"),
    ({"json": {"prompt": "a", "size": "32x32", "res": "32x32"}}, 400, "give size or res, not both"),
    ({"json": {"prompt": "a", "color": "red"}}, 400, "unknown field(s) ['color']"),
    ({"json": {"prompt": ""}}, 400, "'prompt' must be a non-empty string"),
    ({"json": {"frames": 4}}, 400, "'prompt' must be a non-empty string"),
    ({"json": {"prompt": "a", "seed": -3}}, 400, "seed must be an integer in [0, 2**63)"),
    ({"json": {"prompt": "a", "strength": 0.5}}, 400, "strength needs init_video"),
    ({"json": {"prompt": "a", "cfg": 0.5}}, 400, "cfg must be a number >= 1"),
    ({"json": {"prompt": "a", "steps": 0}}, 400, "steps must be a positive integer"),
    ({"json": {"prompt": "a", "sampler": "ddim"}}, 400, "sampler 'ddim' is not one of"),
    ({"json": {"prompt": "a", "init_video": "/etc/passwd"}}, 400, "reads no local files"),
    ({"json": {"prompt": "a", "input_reference": "https://example.com/a.png"}}, 400, "never fetched"),
    ({"json": {"prompt": "a", "input_reference": {"file_id": "file_1"}}}, 400, "file ids are not supported"),
    ({"json": {"prompt": "a", "input_reference": "data:image/png;base64,@@@"}}, 400, "not valid base64"),
    ({"json": {"prompt": "a", "input_reference": "data:image/png;base64,AAAA"}}, 400, "input_reference"),
    ({"json": ["prompt"]}, 400, "must be a JSON object"),
    ({"content": b'{"prompt": "a",', "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"content": b"prompt=a", "headers": {"content-type": "text/plain"}}, 415, "application/json"),
    ({"data": {"prompt": "a", "frames": "many"}}, 400, "frames must be an integer, got 'many'"),
    ({"data": {"prompt": "a", "cfg": "strong"}}, 400, "cfg must be a number, got 'strong'"),
    ({"data": {"prompt": "a"}, "files": {"init_video": ("x.txt", b"hello", "text/plain")}}, 400,
     "upload an image or video"),
    ({"data": {"prompt": "a"}, "files": {"init_video": ("x.mp4", b"not a video", "video/mp4")}}, 400,
     "init_video: "),
    ({"data": {"prompt": "a"}, "files": {"input_reference": ("x.png", b"\x89PNG junk", "image/png")}}, 400,
     "input_reference: "),
    ({"data": {"prompt": "a", "frames": "3000", "res": "512x512"}}, 400, "per-step budget is 4096"),
]


def test_bad_requests_get_one_clear_4xx_each_and_the_server_keeps_serving(pipe, tmp_path):
    with serving(pipe, tmp_path / "out", batcher=False, token_budget=4096) as (server, url):
        with httpx.Client(base_url=url, timeout=30) as http:
            for content, status, words in BAD:
                r = http.post("/v1/videos", **content)
                assert r.status_code == status, (content, r.text)
                error = r.json()["error"]
                assert words in error["message"] and "\n" not in error["message"], (content, error)
                assert error["code"] and error["type"] == "invalid_request_error"
            for method, path, status in [("get", "/v1/videos/video_nope", 404),
                                         ("delete", "/v1/videos/nope", 404),
                                         ("get", "/v1/videos?limit=0", 400),
                                         ("get", "/v1/videos?order=up", 400),
                                         ("get", "/v1/videos?after=video_nope", 400),
                                         ("get", "/v1/videos?colour=1", 400), ("put", "/v1/videos", 405),
                                         ("get", "/v1/nothing", 404), ("post", "/v1/videos/characters", 501),
                                         ("post", "/v1/videos/video_nope/remix", 404)]:
                r = getattr(http, method)(path)
                assert r.status_code == status and r.json()["error"]["message"], (method, path, r.text)
            ok = http.post("/v1/videos", json={"prompt": "still serving", "res": "16x16"})
            assert ok.status_code == 200 and ok.json()["status"] == "queued"
            r = http.get(f"/v1/videos/{ok.json()['id']}/content")
            assert r.status_code == 409 and "queued" in r.json()["error"]["message"]
            r = http.get(f"/v1/videos/{ok.json()['id']}/content", params={"variant": "spritesheet"})
            assert r.status_code == 501
        assert [j.spec.prompt for j in server.store.ordered()] == ["still serving"]
        assert sorted(p.name for p in (tmp_path / "out" / "uploads").iterdir()) == []  # refused uploads gone


def test_a_full_queue_answers_429_and_100_requests_at_once_lose_nothing(pipe, tmp_path):
    with serving(pipe, tmp_path / "out", batcher=False, max_queue=10) as (server, url):
        codes = []

        def post(i):
            with httpx.Client(base_url=url, timeout=60) as http:
                r = http.post("/v1/videos", json={"prompt": f"request {i}", "res": "16x16", "frames": 1})
                codes.append((r.status_code, r.json()))

        threads = [threading.Thread(target=post, args=(i,)) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        accepted = [body["id"] for code, body in codes if code == 200]
        full = [body["error"] for code, body in codes if code == 429]
        assert len(accepted) == 10 and len(full) == 90 and len(codes) == 100
        assert all(e["code"] == "queue_full" and "--max-queue" in e["message"] for e in full)
        server.start_batcher()
        client = sdk(url)
        assert all(wait(client, i).status == "completed" for i in accepted)
        assert client.videos.create(prompt="room again", size="16x16").status == "queued"


def test_server_sent_events_report_progress_and_a_client_may_disconnect(pipe, tmp_path):
    with serving(pipe, tmp_path / "out", batcher=False) as (server, url):
        client = sdk(url)
        video = client.videos.create(prompt="watched", size="16x16", extra_body={"steps": 4})
        with httpx.Client(base_url=url, timeout=30) as http:
            with http.stream("GET", f"/v1/videos/{video.id}/events") as stream:  # the client leaves
                first = next(stream.iter_lines())
                assert json.loads(first.removeprefix("data: "))["status"] == "queued"
            host, port = url.removeprefix("http://").rsplit(":", 1)
            with socket.create_connection((host, int(port))) as raw:  # an upload cut off midway
                raw.sendall(b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                            b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
                            b'Content-Disposition: form-data; name="prompt"\r\n\r\nhalf')
            server.start_batcher()
            events = []
            with http.stream("GET", f"/v1/videos/{video.id}/events") as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
        progress = [e["progress"] for e in events]
        assert events[-1]["status"] == "completed" and progress == sorted(progress) and progress[-1] == 100
        assert len(server.store.ordered()) == 1 and client.videos.list().data[0].id == video.id


def test_a_restart_keeps_finished_videos_and_requeues_unfinished_ones(pipe, tmp_path):
    out = tmp_path / "out"
    with serving(pipe, out) as (_, url):
        done = wait(sdk(url), sdk(url).videos.create(prompt="finished before", size="16x16").id)
        before = (out / f"{done.id}.mp4").read_bytes()
    with serving(pipe, out, batcher=False) as (server, url):
        queued = sdk(url).videos.create(prompt="queued at the stop", size="16x16")
        running = sdk(url).videos.create(prompt="running at the stop", size="16x16")
        assert server.store.start(running.id)  # as if the process died mid-run
    with serving(pipe, out) as (server, url):
        assert server.store.requeued == 2
        client = sdk(url)
        assert client.videos.retrieve(done.id).status == "completed"
        assert (out / f"{done.id}.mp4").read_bytes() == before
        assert [wait(client, v.id).status for v in (queued, running)] == ["completed", "completed"]
        assert [v.id for v in client.videos.list(order="asc").data] == [done.id, queued.id, running.id]


def test_an_api_key_guards_every_route_but_the_page(pipe, tmp_path):
    with serving(pipe, tmp_path / "out", api_key="s3cret") as (_, url):
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/").status_code == 200 and "videodit" in http.get("/").text
            assert http.get("/static/app.js").status_code == 200
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = http.get("/v1/videos", headers=headers)
                assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert http.post("/v1/videos", json={"prompt": "a"}).status_code == 401
        with pytest.raises(openai.AuthenticationError):
            sdk(url, "wrong").videos.list()
        client = sdk(url, "s3cret")
        assert wait(client, client.videos.create(prompt="a", size="16x16").id).status == "completed"


def test_paths_in_requests_are_confined_to_the_input_folder(pipe, tmp_path):
    inputs, outside = tmp_path / "inputs", tmp_path / "private"
    inputs.mkdir()
    outside.mkdir()
    clip = np.random.default_rng(0).integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    write_mp4(inputs / "clip.mp4", clip, fps=16)
    write_mp4(outside / "secret.mp4", clip, fps=16)
    (inputs / "link.mp4").symlink_to(outside / "secret.mp4")
    with serving(pipe, tmp_path / "out", input_dir=inputs) as (_, url):
        with httpx.Client(base_url=url, timeout=30) as http:
            def post(path, frames=9, **extra):
                body = {"prompt": "a", "frames": frames, "res": "16x16", "init_video": path, **extra}
                return http.post("/v1/videos", json=body)

            for path in ("../private/secret.mp4", str(outside / "secret.mp4"), "link.mp4"):
                r = post(path)
                assert r.status_code == 400, path
                assert "outside the server's input folder" in r.json()["error"]["message"]
            r = post("nope.mp4")
            assert r.status_code == 400 and "does not exist" in r.json()["error"]["message"]
            r = post("clip.mp4", frames=12)
            assert r.status_code == 400 and "has 9 frames" in r.json()["error"]["message"]
            r = post("clip.mp4", strength=0.4)
            assert r.status_code == 200
        assert wait(sdk(url), r.json()["id"]).status == "completed"


def test_input_reference_upload_and_data_url_give_the_first_frame(pipe, pipe_pt2, tmp_path):
    image = png_bytes()
    data_url = "data:image/png;base64," + base64.b64encode(image).decode()
    with serving(pipe, tmp_path / "out") as (server, url):
        client = sdk(url)
        common = {"prompt": "a ball", "size": "40x24", "extra_body": {"frames": 9, "seed": 5}}
        upload = client.videos.create(input_reference=("first.png", image, "image/png"), **common)
        inline = client.videos.create(**{**common, "extra_body": {**common["extra_body"], "input_reference":
                                                                  data_url}})
        plain = client.videos.create(**common)
        # the same image reached both jobs
        stored = [Path(server.store.get(v.id).spec.image).read_bytes() for v in (upload, inline)]
        assert stored[0] == stored[1] == image
        videos = {}
        for name, video in (("upload", upload), ("inline", inline), ("plain", plain)):
            assert wait(client, video.id).status == "completed"
            client.videos.download_content(video.id).write_to_file(tmp_path / f"{name}.mp4")
            videos[name] = read_mp4(tmp_path / f"{name}.mp4").astype(np.int16)
        assert videos["upload"].shape == (9, 24, 40, 3)
        # the same request sent two ways: equal up to float rounding of the batch it shared, which x264 can
        # turn into visible differences, far below what the image changes
        same = np.abs(videos["upload"] - videos["inline"]).mean()
        changed = np.abs(videos["upload"][0] - videos["plain"][0]).mean()
        assert changed > 2 and same < changed / 2
    with serving(pipe_pt2, tmp_path / "out2") as (_, url):
        with pytest.raises(openai.BadRequestError, match="needs model.causal_tubelet"):
            sdk(url).videos.create(prompt="a", input_reference=("first.png", image, "image/png"),
                                   extra_body={"frames": 9})


def test_a_last_image_upload_goes_with_the_first(pipe, tmp_path):
    """last_image (an upload, or through the SDK's extra_body as a data URL) with input_reference runs the
    first-and-last-frame task and changes the video; without input_reference it is a 400."""
    first = png_bytes()
    last = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(last, "PNG")
    with serving(pipe, tmp_path / "out") as (_, url):
        with httpx.Client(base_url=url, timeout=30) as http:
            form = {"prompt": "a ball", "size": "40x24", "frames": "9", "seed": "5"}
            f, lst = ("f.png", first, "image/png"), ("l.png", last.getvalue(), "image/png")
            both = http.post("/v1/videos", data=form, files={"input_reference": f, "last_image": lst})
            only = http.post("/v1/videos", data=form, files={"input_reference": f})
            alone = http.post("/v1/videos", data=form, files={"last_image": lst})
        assert both.status_code == 200 and only.status_code == 200
        assert alone.status_code == 400 and "give input_reference (or image) as well" in alone.text
        client, videos = sdk(url), {}
        for name, r in (("both", both), ("only", only)):
            assert wait(client, r.json()["id"]).status == "completed"
            client.videos.download_content(r.json()["id"]).write_to_file(tmp_path / f"{name}.mp4")
            videos[name] = read_mp4(tmp_path / f"{name}.mp4").astype(np.int16)
        assert videos["both"].shape == (9, 24, 40, 3)
        assert np.abs(videos["both"][-1] - videos["only"][-1]).mean() > 1  # the last image changes the end


def test_extend_and_edit_map_to_extension_and_video_to_video(pipe, tmp_path):
    clip = np.random.default_rng(1).integers(0, 256, (9, 16, 24, 3), dtype=np.uint8)
    write_mp4(tmp_path / "clip.mp4", clip, fps=16)
    with serving(pipe, tmp_path / "out") as (_, url):
        client = sdk(url)
        longer = client.videos.extend(prompt="more", seconds="0.5", video=tmp_path / "clip.mp4")
        edited = client.videos.edit(prompt="other", video=tmp_path / "clip.mp4")
        assert (longer.size, longer.seconds) == ("24x16", f"{(9 + 8) / 16:g}")
        assert (edited.size, edited.seconds) == ("24x16", f"{9 / 16:g}")
        for video, frames in ((longer, 17), (edited, 9)):
            assert wait(client, video.id).status == "completed"
            client.videos.download_content(video.id).write_to_file(tmp_path / "got.mp4")
            assert read_mp4(tmp_path / "got.mp4").shape == (frames, 16, 24, 3)
        again = client.videos.edit(prompt="fewer", video=tmp_path / "clip.mp4", extra_body={"frames": 5})
        assert wait(client, again.id).status == "completed"
        with httpx.Client(base_url=url, timeout=30) as http:  # a finished video by id (JSON; the SDK uploads)
            body = {"prompt": "on", "seconds": "0.5", "video": {"id": again.id}}
            r = http.post("/v1/videos/extensions", json=body)
            assert r.status_code == 200 and r.json()["seconds"] == f"{(5 + 8) / 16:g}"
            assert wait(client, r.json()["id"]).status == "completed"
            r = http.post("/v1/videos/edits", json={"prompt": "x", "video": {"id": "video_nope"}})
            assert r.status_code == 404


def test_the_memory_estimate_admits_what_fits_refuses_the_rest_and_caps_the_step_budget(tmp_path):
    """A limit between what two requests need admits the one and refuses the other with generate.py's
    estimate and its numbers; the per-step budget is what one pass may hold in that memory."""
    from videodit import budget
    from videodit.serve.admission import memory_limit, pass_token_limit

    ckpt = _checkpoint(tmp_path / "ck")
    fp = memory_limit(str(ckpt), None, torch.float32, torch.device("cpu"), 1.0).footprint
    small = budget.request_tokens_and_bytes(1, 16, 16, fp, True, False, None)[1]
    big = budget.request_tokens_and_bytes(16, 1024, 1024, fp, True, False, None)[1]
    assert big > small
    memory = memory_limit(str(ckpt), None, torch.float32, torch.device("cpu"), (small + big) / 2 / 2**30)
    assert pass_token_limit(memory, 10**9) == budget.pass_token_budget(memory.footprint, memory.available)
    assert pass_token_limit(memory, 7) == 7 and pass_token_limit(None, 7) == 7
    with serving(load_pipeline(str(ckpt)), tmp_path / "out", batcher=False, memory=memory,
                 token_budget=10**9) as (_, url):
        with httpx.Client(base_url=url, timeout=30) as http:
            r = http.post("/v1/videos", json={"prompt": "a", "res": "16x16", "frames": 1})
            assert r.status_code == 200
            r = http.post("/v1/videos", json={"prompt": "a", "res": "1024x1024", "frames": 16})
            assert r.status_code == 400 and "1024x1024" in r.json()["error"]["message"]


def test_a_job_joining_a_running_batch_midway_gets_the_latents_it_gets_alone(pipe, tmp_path, monkeypatch):
    import videodit.serve.batcher as batcher_module

    latents = {}
    real = batcher_module.decode_batch_to_mp4

    def keep(batch, requests, vae, fps):
        for latent, request in zip(batch, requests):
            latents.setdefault(request.prompt, []).append(latent.clone())
        return real(batch, requests, vae, fps)

    monkeypatch.setattr(batcher_module, "decode_batch_to_mp4", keep)
    body = {"prompt": "the joiner", "size": "24x16", "extra_body": {"frames": 9, "seed": 7, "steps": 4}}
    with serving(pipe, tmp_path / "out", batcher=False) as (server, url):
        client = sdk(url)
        alone = client.videos.create(**body)
        while server.batcher.tick():
            pass
        busy = [client.videos.create(prompt=f"busy {i}", size=size,
                                     extra_body={"frames": frames, "steps": 6, "seed": i})
                for i, (size, frames) in enumerate([("32x32", 13), ("16x48", 5)])]
        server.batcher.tick()
        server.batcher.tick()
        joined = client.videos.create(**body)
        sizes = []
        while server.batcher.tick():
            sizes.append(len(server.batcher.running))
        assert sizes[0] == 3  # the joiner shared steps with both busy jobs
        assert all(wait(client, v.id).status == "completed" for v in (alone, joined, *busy))
    first, second = latents["the joiner"]
    torch.testing.assert_close(second, first, atol=1e-4, rtol=0)


def test_the_command_line_refuses_bad_flags_in_one_line_and_prints_its_url(tmp_path):
    from videodit.serve.__main__ import main

    bad = {"--host 0.0.0.0": "give --api-key", "--port 70000": "--port must be",
           f"--ckpt {tmp_path}": "not a checkpoint folder", "--max-queue 0": "must be >= 1",
           f"--input-dir {tmp_path / 'nope'}": "is not a folder", "--bogus": "unrecognized"}
    for argv, words in bad.items():
        proc = subprocess.run([sys.executable, "-m", "videodit.serve", *argv.split()], capture_output=True,
                              text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 2 and words in proc.stderr, argv
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert main(["--host", "10.1.2.3"]) == 2


@pytest.mark.slow
def test_python_m_videodit_serve_prints_its_url_and_serves(tmp_path):
    ckpt = _checkpoint(tmp_path / "ck")
    argv = ["--ckpt", str(ckpt), "--port", "0", "--out", str(tmp_path / "out")]
    proc = subprocess.Popen([sys.executable, "-m", "videodit.serve", *argv], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        while line and "http://" not in line:
            line = proc.stdout.readline()
        url = line.split(" on ")[1].split("/ ")[0]
        client = sdk(url)
        assert wait(client, client.videos.create(prompt="a", size="16x16").id).status == "completed"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
