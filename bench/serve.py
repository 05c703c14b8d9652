"""The generation server's continuous batching against one-at-a-time and static batching, on one stream.

    python -m bench.serve [--num 24] [--load 4] [--seed 0] [--ckpt default] [--steps N]

The stream: `num` requests drawn from MIX (shapes of the quick start's scale, documented below), arriving
as a Poisson process whose rate is `load` times what one-at-a-time serves (1 / its mean service time, so
all three arms see more than one-at-a-time can keep up with). One process, the model loaded once, the
checkpoint's sampling settings, three arms in this order:

- `sequential`: each request alone through `videodit.pipeline` (sample_latents with one request, then
  decode_to_mp4: batch size 1, as generate.py runs a single prompt), first come first served. Its
  service times are measured for real, once before the other arms and once after them (each request's
  mean of the two, so that a machine whose load drifts does not favour either side); its queue is
  replayed on those times (an idle server would only have waited for the next arrival).
- `static`: wait, batch, run to completion. When free, the server takes every request that has arrived
  (waiting `--static-window` seconds after the first one when none is waiting), samples them packed in one
  pass (`sample_latents`), decodes them, and only then looks at the queue again. Batches run for real; the
  clock between them is replayed the same way.
- `continuous`: the real server (`videodit.serve`, HTTP on 127.0.0.1) in real time: each request is
  POSTed to /v1/videos at its arrival time; jobs join the running set at the next denoising step and
  leave when done. Latency is the server's own submitted -> finished time of each job.

Every line records the machine's 1-minute load average at its end (`loadavg`): on shared cores the
figures move with it.

Throughput is videos per minute over the span from the first arrival to the last completion; latency is
arrival -> video written. The last line is JSON with `throughput_ratio_vs_sequential` (continuous /
sequential) and `p95_latency_ratio_vs_static` (continuous p95 / static p95).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from videodit import pipeline
from videodit.serve.app import ServeConfig
from videodit.serve.server import Server
from videodit.video_request import VideoRequest

# (weight, frames, (height, width), prompt): the shapes a quick-start user asks for, at 16 fps
MIX = [
    (0.35, 16, (128, 128), "a red ball bouncing on a black background"),  # 1 s, square
    (0.25, 8, (96, 160), "a blue square moving to the right"),  # 0.5 s, landscape
    (0.20, 24, (160, 96), "a green circle falling down"),  # 1.5 s, portrait
    (0.20, 1, (128, 128), "a yellow triangle on a white background"),  # a still
]
FPS = 16.0


@dataclass
class Item:
    index: int
    prompt: str
    frames: int
    height: int
    width: int
    seed: int


def draw_stream(num: int, seed: int) -> list[Item]:
    rng = np.random.default_rng(seed)
    weights = np.array([m[0] for m in MIX])
    picks = rng.choice(len(MIX), size=num, p=weights / weights.sum())
    return [Item(i, MIX[k][3], MIX[k][1], *MIX[k][2], seed=1000 + i) for i, k in enumerate(picks)]


def video_request(item: Item, folder: Path) -> VideoRequest:
    return VideoRequest(item.prompt, item.frames, item.height, item.width, item.seed, "",
                        folder / f"{item.index:04d}.mp4")


def run_batch(pipe, items: list[Item], settings, folder: Path) -> list[float]:
    """Sample `items` packed, decode each -> seconds from the start until each one's video is written."""
    start = time.perf_counter()
    requests = [video_request(it, folder) for it in items]
    latents = pipeline.sample_latents(pipe, requests, settings, progress=False)
    done = []
    for request, latent in zip(requests, latents):
        pipeline.decode_to_mp4(latent, request, pipe.vae, FPS)
        done.append(time.perf_counter() - start)
    return done


def in_worker(fn, *args):
    """fn(*args) on a fresh thread -> its result. Every arm computes off the main thread, as the server's
    batcher does: on a machine whose cores are shared, torch's OpenMP workers in the main thread can run many
    times slower (spin-waiting) than in another thread, which would bias the comparison."""
    out = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # re-raised in the caller
            out["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def summary(arm: str, arrivals: np.ndarray, finished: np.ndarray, **extra) -> dict:
    latency = finished - arrivals
    span = float(finished.max() - arrivals.min())
    return {"bench": "serve", "arm": arm, "videos": len(arrivals),
            "throughput_videos_per_min": round(60 * len(arrivals) / span, 2), "span_s": round(span, 1),
            "p50_latency_s": round(float(np.percentile(latency, 50)), 2),
            "p95_latency_s": round(float(np.percentile(latency, 95)), 2), **extra}


def sequential(pipe, items, settings, folder) -> np.ndarray:
    """Each request alone -> its service time in seconds."""
    return np.array([run_batch(pipe, [it], settings, folder)[0] for it in items])


def static(pipe, items, arrivals, settings, folder, window: float) -> tuple[np.ndarray, int]:
    """Wait, batch, run to completion -> (finish time of each request, batches run)."""
    finished = np.zeros(len(items))
    clock, nxt, batches = -np.inf, 0, 0  # the clock: when the server is next free
    while nxt < len(items):
        if arrivals[nxt] > clock:  # idle: the next arrival opens a window
            clock = arrivals[nxt] + window
        batch = [i for i in range(nxt, len(items)) if arrivals[i] <= clock]
        for i, t in zip(batch, run_batch(pipe, [items[i] for i in batch], settings, folder)):
            finished[i] = clock + t
        clock = max(finished[batch])
        nxt = batch[-1] + 1
        batches += 1
    return finished, batches


def continuous(pipe, items, arrivals, out: Path, steps: int | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The server in real time -> (arrival, finish) per request in seconds from the start, batcher figures."""
    server = Server(pipe, ServeConfig(out=out, fps=FPS, max_queue=max(64, len(items))))
    url = server.start()
    ids: list[str | None] = [None] * len(items)
    try:
        start = time.time()

        def submit():
            for it, at in zip(items, arrivals):
                time.sleep(max(0.0, start + at - time.time()))
                body = {"prompt": it.prompt, "frames": it.frames, "res": f"{it.height}x{it.width}",
                        "seed": it.seed, **({"steps": steps} if steps else {})}
                post = urllib.request.Request(f"{url}/v1/videos", data=json.dumps(body).encode(),
                                              headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(post, timeout=600) as response:
                    ids[it.index] = json.loads(response.read())["id"]

        client = threading.Thread(target=submit)
        client.start()
        client.join()
        while True:
            jobs = [server.store.get(i) for i in ids]
            if all(j.status in ("completed", "failed") for j in jobs):
                break
            time.sleep(0.05)
        failed = [j.id for j in jobs if j.status != "completed"]
        if failed:
            raise RuntimeError(f"the server failed jobs {failed}: {[j.error for j in jobs if j.error]}")
        submitted = np.array([j.submitted - start for j in jobs])
        finished = np.array([j.finished - start for j in jobs])
        batcher = server.batcher
        figures = {"forward_passes": batcher.steps_run,
                   "mean_jobs_per_pass": round(batcher.samples_stepped / max(1, batcher.steps_run), 2)}
        return submitted, finished, figures
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num", type=int, default=24, help="requests in the stream")
    ap.add_argument("--load", type=float, default=4.0,
                    help="arrival rate as a multiple of what one-at-a-time serves (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="draws the shapes and the arrival times")
    ap.add_argument("--ckpt", default="default")
    ap.add_argument("--steps", type=int, help="sampling steps (default: the checkpoint's)")
    ap.add_argument("--static-window", type=float, default=2.0,
                    help="seconds static batching waits after a first arrival finds it idle (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu (the recorded figures), cuda, cuda:N or auto")
    args = ap.parse_args(argv)
    if args.num < 2 or not args.load > 0 or args.static_window < 0:
        ap.error("--num must be >= 2, --load > 0, --static-window >= 0")
    pipe = pipeline.load_pipeline(args.ckpt, device=args.device)
    settings = pipeline.sampling_settings(pipe.meta, steps=args.steps)
    items = draw_stream(args.num, args.seed)
    mix = {f"{f}x{h}x{w}": sum(1 for it in items if (it.frames, it.height, it.width) == (f, h, w))
           for _, f, (h, w), _ in MIX}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        in_worker(run_batch, pipe, [Item(-1, "warm up", 1, 32, 32, 0)],
                  pipeline.sampling_settings(pipe.meta, steps=1), tmp)

        before = in_worker(sequential, pipe, items, settings, tmp)
        rate = args.load / float(before.mean())  # arrivals per second
        gaps = np.random.default_rng(args.seed + 1).exponential(1.0 / rate, size=len(items))
        arrivals = np.concatenate([[0.0], np.cumsum(gaps[1:])])
        print(json.dumps({"bench": "serve", "stage": "sequential service times, first pass",
                          "mean_service_s": round(float(before.mean()), 2), "loadavg": os.getloadavg()[0]}),
              flush=True)

        finished, batches = in_worker(static, pipe, items, arrivals, settings, tmp, args.static_window)
        stat = summary("static", arrivals, finished, batches=batches, window_s=args.static_window,
                       loadavg=os.getloadavg()[0])
        print(json.dumps(stat), flush=True)

        submitted, finished, figures = continuous(pipe, items, arrivals, tmp / "served", args.steps)
        cont = summary("continuous", submitted, finished, **figures, loadavg=os.getloadavg()[0])
        print(json.dumps(cont), flush=True)

        after = in_worker(sequential, pipe, items, settings, tmp)
        service = (before + after) / 2
        finished, free = np.zeros(len(items)), 0.0
        for i, (a, d) in enumerate(zip(arrivals, service)):
            free = finished[i] = max(a, free) + d
        seq = summary("sequential", arrivals, finished, mean_service_s=round(float(service.mean()), 2),
                      mean_service_s_passes=[round(float(before.mean()), 2), round(float(after.mean()), 2)],
                      steps=settings.steps, mix=mix, load=args.load, arrival_rate_per_min=round(60 * rate, 2),
                      threads=torch.get_num_threads(), loadavg=os.getloadavg()[0])
        print(json.dumps(seq), flush=True)
    arms = (seq, stat, cont)
    result = {"bench": "serve", "videos": args.num, "load": args.load, "steps": settings.steps,
              "throughput_videos_per_min": {a["arm"]: a["throughput_videos_per_min"] for a in arms},
              "p95_latency_s": {a["arm"]: a["p95_latency_s"] for a in arms},
              "throughput_ratio_vs_sequential": round(cont["throughput_videos_per_min"]
                                                      / seq["throughput_videos_per_min"], 3),
              "p95_latency_ratio_vs_static": round(cont["p95_latency_s"] / stat["p95_latency_s"], 3)}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
