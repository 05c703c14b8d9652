"""A local generation server: continuous batching across video shapes, an API in the shape of the hosted
video API (so the `openai` SDK's `client.videos` works against it), and a web page.

    python -m videodit.serve                      # the embedded default model on http://127.0.0.1:8000
    python -m videodit.serve --ckpt runs/x/final --port 0 --out outputs/mine

Layers, each in its own module:
- `spec`: what a client asks for (API fields and prompts-file fields) checked into a `JobSpec`;
- `jobs`: the job records, written atomically to the output folder so that they survive a restart;
- `batcher`: the scheduler loop, one packed denoising step at a time over every running job; jobs join at
  step boundaries within a per-step token budget and leave when done (independent of HTTP);
- `admission`: whether a request may run on this server at all (token budget, memory estimate);
- `app`: the HTTP routes (FastAPI) and the page in `static/`; `server`: loading, wiring and running it.
"""
