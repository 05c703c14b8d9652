"""The scheduler loop: continuous batching of denoising steps across video shapes and tasks.

Each tick (1) lets queued jobs join the running set, first submitted first, while their tokens fit the
per-step budget (a job joins an empty set whatever its size), (2) advances every running job by ONE denoising
step, all of them and their CFG passes packed into one forward call (`videodit.sampling.denoise_step`), and
(3) lets the jobs whose own steps are done leave, to be decoded to `<id>.mp4` (written under a temporary name
and renamed). A job deleted while it runs leaves at the next tick.

`run` decodes on a second thread while the loop keeps stepping (small denoising steps leave cores idle; a
decode would otherwise stall every running job); driven by hand, `tick` decodes before it returns. Jobs
that finish together decode together, those of one shape as one batch, which on a CPU costs a fraction of
decoding them one by one.

Each job keeps its own scheduler, seed, steps and guidance, and the model sees every sample with its own
timestep, so a job's latents do not depend on what it shared steps with (to float rounding).
"""

from __future__ import annotations

import io
import os
import queue
import sys
import threading
import traceback
from dataclasses import dataclass, replace

import torch
from PIL import Image

from videodit.pipeline import Pipeline, decode_batch_to_mp4, decode_groups, latent_request, sampling_settings
from videodit.sampling import Denoising, denoise_step, start_denoising
from videodit.serve.admission import step_tokens
from videodit.serve.jobs import Job, JobStore, write_atomic
from videodit.video_reader import decode_frames, first_frames, read_conditioning
from videodit.video_request import VideoRequest


@dataclass
class Running:
    """A job in the running set."""

    job_id: str
    request: VideoRequest
    state: Denoising
    tokens: int  # tokens it adds to every forward pass


class Batcher:
    """Runs the jobs of `store` on `pipe`, at most `token_budget` tokens per forward pass (but one job)."""

    def __init__(self, pipe: Pipeline, store: JobStore, fps: float, token_budget: int):
        if token_budget < 1:
            raise ValueError(f"token_budget must be >= 1, got {token_budget}")
        self.pipe, self.store, self.fps, self.token_budget = pipe, store, fps, token_budget
        self.running: list[Running] = []
        self.decoding: queue.Queue[Running] | None = None  # set while `run` decodes on its own thread
        self.steps_run = 0  # forward passes so far
        self.samples_stepped = 0  # job steps so far (a pass with three jobs counts three)

    def run(self, stop: threading.Event, idle_wait: float = 0.5) -> None:
        """Tick until `stop` is set, decoding on a thread of its own; wait for a new job while there is
        nothing to run. Jobs still running or waiting to be decoded at the stop stay in_progress on disk (the
        next start queues them again)."""
        self.decoding = queue.Queue()
        decoder = threading.Thread(target=self._decode_until, args=(stop,), name="decoder", daemon=True)
        decoder.start()
        try:
            while not stop.is_set():
                if not self.tick():
                    self.store.wait(idle_wait)
        finally:
            decoder.join()
            self.decoding = None

    def _decode_until(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                ready = [self.decoding.get(timeout=0.2)]
            except queue.Empty:
                continue
            while True:  # everything that finished meanwhile decodes with it, one batch per shape
                try:
                    ready.append(self.decoding.get_nowait())
                except queue.Empty:
                    break
            self._finish([r for r in ready if self.store.exists(r.job_id)])

    @torch.no_grad()
    def tick(self) -> bool:
        """Admit, step once, finish -> whether there was anything to run."""
        self.running = [r for r in self.running if self.store.exists(r.job_id)]  # deleted ones leave
        self._admit()
        if not self.running:
            return False
        try:
            denoise_step(self.pipe.dit, [r.state for r in self.running], self.pipe.dtype)
        except Exception as e:  # e.g. out of memory: these jobs fail, the server keeps serving
            traceback.print_exc(file=sys.stderr)
            for r in self.running:
                self.store.fail(r.job_id, "generation_failed", f"denoising failed: {type(e).__name__}: {e}")
            self.running = []
            return True
        self.steps_run += 1
        self.samples_stepped += len(self.running)
        still, done = [], []
        for r in self.running:
            if r.state.done:
                self.store.set_progress(r.job_id, 99)
                done.append(r)
            else:
                self.store.set_progress(r.job_id, min(99, 100 * r.state.calls // r.state.total_calls))
                still.append(r)
        self.running = still
        if self.decoding is not None:
            for r in done:
                self.decoding.put(r)
        elif done:
            self._finish(done)
        return True

    def _admit(self) -> None:
        used = sum(r.tokens for r in self.running)
        for job in self.store.queued():
            tokens = step_tokens(job.spec, self.pipe)
            if self.running and used + tokens > self.token_budget:
                break  # first come, first served: later jobs wait behind this one
            if not self.store.start(job.id):
                continue  # deleted meanwhile
            try:
                self.running.append(self._prepare(job, tokens))
            except Exception as e:
                if not isinstance(e, ValueError):
                    traceback.print_exc(file=sys.stderr)
                code = "invalid_request" if isinstance(e, ValueError) else "generation_failed"
                self.store.fail(job.id, code, str(e))
                continue
            used += tokens

    def _prepare(self, job: Job, tokens: int) -> Running:
        """Encode the job's prompt (and init video or conditioning frames) -> its state before step one."""
        pipe, spec = self.pipe, job.spec
        request = spec.video_request(self.store.video_path(job.id))
        init = first_frames(request.init_video, request.frames, job.id) if request.init_video else None
        cond = None
        if request.image is not None or request.extend is not None:
            cond = read_conditioning(request.image, request.extend, request.frames, self.fps)
        last = None
        if request.last_image is not None:
            last = read_conditioning(request.last_image, None, request.frames, self.fps)
        texts, _ = pipe.text.encode([request.prompt, request.negative_prompt])
        latent_req = latent_request(pipe, request, texts[0], texts[1], init, cond, last)
        settings = sampling_settings(pipe.meta, steps=spec.steps, cfg=spec.cfg, sampler=spec.sampler)
        state = start_denoising(pipe.dit, latent_req, settings.steps, settings.sampler, settings.cfg,
                                pipe.flow_cfg, pipe.device, pipe.dtype, settings.cfg_interval,
                                settings.skip_guidance, frozenset(settings.skip_blocks))
        return Running(job.id, request, state, tokens)

    @torch.no_grad()
    def _finish(self, runs: list[Running]) -> None:
        """Decode finished jobs, those of one shape as one batch (`videodit.pipeline.decode_groups`), each to
        a temporary file renamed to `<id>.mp4`; write the thumbnails; mark them completed."""
        videos = [r.state.video for r in runs]
        for group in decode_groups(videos, [r.request for r in runs], self.pipe.vae):
            self._finish_group([runs[i] for i in group])

    def _finish_group(self, runs: list[Running]) -> None:
        partials = [self.store.video_path(r.job_id).with_name(f".{r.job_id}.partial.mp4") for r in runs]
        try:
            decode_batch_to_mp4([r.state.video for r in runs],
                                [replace(r.request, out=p) for r, p in zip(runs, partials)], self.pipe.vae,
                                self.fps)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            for r, partial in zip(runs, partials):
                partial.unlink(missing_ok=True)
                self.store.fail(r.job_id, "generation_failed", f"decoding failed: {type(e).__name__}: {e}")
            return
        for r, partial in zip(runs, partials):
            out = self.store.video_path(r.job_id)
            try:
                os.replace(partial, out)
                thumb = Image.fromarray(decode_frames(out, [0])[0])
                write_atomic(self.store.thumbnail_path(r.job_id), _jpeg(thumb))
            except Exception as e:
                traceback.print_exc(file=sys.stderr)
                partial.unlink(missing_ok=True)
                self.store.fail(r.job_id, "generation_failed", f"writing failed: {type(e).__name__}: {e}")
                continue
            if not self.store.complete(r.job_id):  # deleted while it was decoded
                self.store.remove_files(r.job_id)


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()
