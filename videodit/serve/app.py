"""The HTTP layer: routes in the shape of the hosted video API (`/v1/videos`, which the `openai` SDK's
`client.videos` calls), server-sent progress events, and the web page. It only checks, queues, reports and
serves files; the batcher (`videodit.serve.batcher`) runs the jobs.

| route | SDK method | what it does |
|---|---|---|
| POST /v1/videos | videos.create | a job from form fields or a JSON body (`videodit.serve.spec`) |
| GET /v1/videos/{id} | videos.retrieve | the video object (status, progress, queue position) |
| GET /v1/videos/{id}/content | videos.download_content | the mp4 (`variant=thumbnail`: a JPEG) |
| GET /v1/videos | videos.list | `{data, has_more, first_id, last_id}`; `after`, `limit`, `order` |
| DELETE /v1/videos/{id} | videos.delete | cancels a queued or running job, or deletes a finished one |
| POST /v1/videos/{id}/remix | videos.remix | video-to-video on a completed video with a new prompt |
| POST /v1/videos/edits | videos.edit | video-to-video on an uploaded video (or `{"video": {"id"}}`) |
| POST /v1/videos/extensions | videos.extend | continues a video by `seconds` (a causal-tubelet checkpoint) |
| GET /v1/videos/{id}/events | - | server-sent events: the video object at every change |

Errors are `{"error": {"message", "type", "param", "code"}}` with a 4xx status for anything the client can
fix; a GET of a deleted (or cancelled) job is a 404.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from videodit.pipeline import Pipeline, check_last_frame_count, prefix_latent_frames
from videodit.serve.admission import MemoryLimit, check_admission, pass_token_limit
from videodit.serve.jobs import FINISHED, Job, JobStore, QueueFull, new_job_id
from videodit.serve.spec import PATH_KEYS, JobSpec, confined_path, job_spec, parse_seconds, typed_form_fields
from videodit.video_reader import first_frames, frames_at_rate, probe_video, read_conditioning
from videodit.video_request import latent_shape

STATIC = Path(__file__).parent / "static"
SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/bmp": ".bmp",
            "video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
            "image/gif": ".gif"}
EVENT_POLL_S = 0.2  # how often an event stream looks for changes


@dataclass
class ServeConfig:
    """What the server was started with (see `python -m videodit.serve --help`)."""

    out: Path
    fps: float = 16.0
    model_name: str = "videodit"
    input_dir: Path | None = None  # paths in requests are read only from under here; None: no paths
    api_key: str | None = None
    max_queue: int = 64
    token_budget: int = 65536
    max_upload_mb: float = 64.0
    memory: MemoryLimit | None = None  # the up-front memory estimate (`admission.memory_limit`); None: off

    def __post_init__(self):
        if not (self.fps > 0):
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.token_budget < 1:
            raise ValueError(f"token_budget must be >= 1, got {self.token_budget}")
        if not (self.max_upload_mb > 0):
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")


class ApiError(Exception):
    """An error answered as `{"error": {...}}` with `status`."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


def error_response(status: int, code: str, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def build_app(pipe: Pipeline, store: JobStore, config: ServeConfig) -> FastAPI:
    """The FastAPI app of one loaded pipeline and its job store."""
    app = FastAPI(title="videodit", docs_url=None, redoc_url=None, openapi_url=None)
    limit = int(config.max_upload_mb * 2**20)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(e.status, e.code, e.message, e.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        codes = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}
        return error_response(e.status_code, codes.get(e.status_code, "http_error"), str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        return error_response(400, "invalid_request", str(e.errors()))

    def check_key(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(given.encode(), config.api_key.encode()):
            raise ApiError(401, "invalid_api_key",
                "this server needs its API key: send 'Authorization: Bearer "
                "KEY' (the SDK's api_key)")

    def video_object(job: Job, positions: dict[str, int] | None = None) -> dict:
        """The API's video object; `positions`: `store.queue_positions()` when many objects are made."""
        spec = job.spec
        positions = store.queue_positions() if positions is None else positions
        return {
            "id": job.id, "object": "video", "status": job.status, "progress": job.progress,
            "created_at": job.created_at, "completed_at": job.completed_at, "expires_at": None,
            "seconds": spec.seconds, "size": spec.size, "model": spec.model, "prompt": spec.prompt,
            "error": job.error, "remixed_from_video_id": spec.remixed_from,
            "queue_position": positions.get(job.id), "frames": spec.frames, "fps": config.fps,
            "seed": spec.seed,
        }

    def find(video_id: str) -> Job:
        job = store.get(video_id)
        if job is None:
            raise ApiError(404, "not_found",
                f"no video {video_id!r} on this server (never made, cancelled or "
                f"deleted)", "video_id")
        return job

    async def read_body(request: Request) -> tuple[dict, dict[str, UploadFile], bool]:
        """-> (fields, uploaded files, whether the fields came as form text)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limit + 2**20:
            raise ApiError(413, "request_too_large", f"the request body ({int(size)} bytes) is over the "
                                                     f"{config.max_upload_mb:g} MB limit (--max-upload-mb)")
        try:
            if kind == "application/json":
                raw = bytearray()
                async for chunk in request.stream():
                    raw += chunk
                    if len(raw) > limit + 2**20:
                        raise ApiError(413, "request_too_large",
                                       f"the request body is over the {config.max_upload_mb:g} MB limit")
                try:
                    body = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}") from None
                if not isinstance(body, dict):
                    raise ApiError(400, "invalid_json", f"the body must be a JSON object, got "
                                                        f"{type(body).__name__}")
                return body, {}, False
            if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
                form = await request.form(max_files=8, max_fields=64, max_part_size=limit)
                fields, files = {}, {}
                for key, value in form.multi_items():
                    if key in fields or key in files:
                        raise ApiError(400, "invalid_request", f"field {key!r} is given twice", key)
                    if isinstance(value, UploadFile):
                        files[key] = value
                    else:
                        fields[key] = value
                return fields, files, True
        except ClientDisconnect:
            raise ApiError(400, "client_disconnected",
                "the client closed the connection mid-request") from None
        raise ApiError(415, "unsupported_media_type", f"send application/json or multipart/form-data, got "
                                                      f"{kind or 'no content type'!r}")

    async def save_upload(upload: UploadFile, dest_of, key: str) -> str:
        suffix = Path(upload.filename or "").suffix.lower()
        if suffix not in SUFFIXES.values():
            suffix = SUFFIXES.get((upload.content_type or "").lower(), "")
        if not suffix:
            raise ApiError(400, "invalid_file",
                f"{key}: upload an image or video ({', '.join(SUFFIXES)}); got "
                f"{upload.filename!r} of type {upload.content_type!r}", key)
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, "file_too_large", f"{key} is over the {config.max_upload_mb:g} MB limit "
                                                  f"(--max-upload-mb)", key)
        return write_owned(dest_of(key, suffix), data)

    def write_owned(path: Path, data: bytes) -> str:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return str(path)

    def reference(value, dest_of) -> str:
        """input_reference given as text or JSON: a data: URL (or {"image_url": data URL}) -> a saved file."""
        if isinstance(value, dict) and set(value) == {"image_url"}:
            value = value["image_url"]
        elif isinstance(value, dict) and "file_id" in value:
            raise ApiError(400, "invalid_request",
                "input_reference file ids are not supported here: upload the "
                "image or give a data: URL", "input_reference")
        if not isinstance(value, str):
            raise ApiError(400, "invalid_request", f"input_reference must be an upload or a data: URL, got "
                                                   f"{type(value).__name__}", "input_reference")
        m = re.fullmatch(r"data:([\w.+/-]+)?(;[^,]*)?,(.*)", value, flags=re.S)
        if m is None:
            raise ApiError(400, "invalid_request",
                "input_reference URLs are never fetched: upload the image or "
                "give it as a data: URL", "input_reference")
        suffix = SUFFIXES.get((m.group(1) or "").lower())
        if suffix is None or ";base64" not in (m.group(2) or ""):
            raise ApiError(400, "invalid_request", f"input_reference data URL must be base64 of one of "
                                                   f"{', '.join(SUFFIXES)}", "input_reference")
        try:
            data = base64.b64decode(m.group(3), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "invalid_request", "input_reference data URL is not valid base64",
                           "input_reference") from None
        if len(data) > limit:
            raise ApiError(413, "file_too_large", f"input_reference is over the {config.max_upload_mb:g} MB "
                                                  f"limit", "input_reference")
        return write_owned(dest_of("image", suffix), data)

    async def resolve_files(job_id: str, body: dict, files: dict[str, UploadFile],
                            owned: dict[str, str]) -> dict:
        """Uploads and data: URLs saved as the job's own files; client paths confined to the input folder;
        `owned`: files the server itself hands the job (a finished video to remix)."""
        def dest_of(key: str, suffix: str) -> Path:
            return store.upload_path(job_id, key, suffix)

        body = dict(body)
        for key in owned:
            if key in body or key in files:
                raise ApiError(400, "invalid_request",
                               f"{key} comes from the video this request starts from; do not give it", key)
        for key, upload in files.items():
            if key not in (*PATH_KEYS, "input_reference"):
                raise ApiError(400, "invalid_request", f"{key!r} is not a file field; files go in "
                                                       f"{', '.join((*PATH_KEYS, 'input_reference'))}", key)
            body[key] = await save_upload(upload, dest_of, "image" if key == "input_reference" else key)
        for key in PATH_KEYS:
            if key in body and key not in files and key not in owned:
                body[key] = confined_path(body[key], config.input_dir, key)
        if "input_reference" in body and "input_reference" not in files:
            body["input_reference"] = reference(body["input_reference"], dest_of)
        body.update(owned)
        return body

    def check_inputs(spec: JobSpec) -> None:
        """Decode the job's files and size it: everything that can be refused is refused now."""
        field = "init_video" if spec.init_video else "input_reference" if spec.image else "extend"
        try:
            if spec.init_video:
                first_frames(spec.init_video, spec.frames, "this request")
            given = None
            if spec.image or spec.extend:
                given = read_conditioning(Path(spec.image) if spec.image else None,
                                          Path(spec.extend) if spec.extend else None, spec.frames, config.fps)
        except ValueError as e:
            raise ValueError(f"{field}: {e}") from None
        if spec.last_image:
            try:
                read_conditioning(Path(spec.last_image), None, spec.frames, config.fps)
            except ValueError as e:
                raise ValueError(f"last_image: {e}") from None
        size = latent_shape(spec.frames, spec.height, spec.width, pipe.vae.temporal_stride,
                            pipe.vae.spatial_stride)
        if given is not None:
            prefix_latent_frames(given.shape[0], size, pipe.dit.config, pipe.vae.temporal_stride,
                                 "input_reference" if spec.image else "the video to extend")
        if spec.last_image:
            check_last_frame_count(size, pipe)
        check_admission(spec, pipe, pass_token_limit(config.memory, config.token_budget), config.memory)

    def queue_full() -> ApiError:
        return ApiError(429, "queue_full", f"the queue is full ({config.max_queue} jobs queued or running, "
                                           f"--max-queue); retry later")

    def check_room() -> None:
        if store.unfinished() >= config.max_queue:
            raise queue_full()

    @contextlib.contextmanager
    def files_removed_on_refusal(job_id: str):
        """Any error inside removes the job's files; a ValueError becomes a 400 naming it, a full queue a
        429."""
        try:
            yield
        except ValueError as e:
            store.remove_files(job_id)
            raise ApiError(400, "invalid_request", str(e)) from None
        except QueueFull:
            store.remove_files(job_id)
            raise queue_full() from None
        except BaseException:
            store.remove_files(job_id)
            raise

    async def submit(job_id: str, body: dict, files: dict[str, UploadFile], form: bool,
                     owned: dict[str, str] | None = None, remixed_from: str | None = None) -> dict:
        """Check, size and queue a job -> its video object; on any refusal the job's files are removed."""
        with files_removed_on_refusal(job_id):
            check_room()
            typed = typed_form_fields(body) if form else body
            resolved = await resolve_files(job_id, typed, files, owned or {})
            spec = job_spec(resolved, config.fps, config.model_name, seed=secrets.randbelow(2**31))
            spec.remixed_from = remixed_from
            await run_in_threadpool(check_inputs, spec)
            return video_object(store.add(job_id, spec))

    async def source_video(job_id: str, key: str, body: dict,
                           files: dict[str, UploadFile]) -> tuple[dict, str]:
        """The `video` of an edit or extension: an upload, or {"id": a completed video} -> (body without it,
        the file, owned by job `job_id` as its `key`)."""
        body = dict(body)
        video = body.pop("video", None)
        upload = files.pop("video", None)
        if upload is not None:
            def dest_of(_: str, suffix: str) -> Path:
                return store.upload_path(job_id, key, suffix)

            path = await save_upload(upload, dest_of, "video")
        elif isinstance(video, dict) and isinstance(video.get("id"), str):
            path = str(link_finished(find(video["id"]), store.upload_path(job_id, key, ".mp4")))
        else:
            raise ApiError(400, "invalid_request", "video must be an uploaded file or {\"id\": a completed "
                                                   "video's id}", "video")
        return body, path

    def link_finished(job: Job, dest: Path) -> Path:
        if job.status != "completed":
            raise ApiError(409, "video_not_ready",
                f"video {job.id!r} is {job.status}; only a completed video "
                f"can be used", "video_id")
        try:
            os.link(store.video_path(job.id), dest)
        except OSError:
            write_owned(dest, store.video_path(job.id).read_bytes())
        return dest

    router = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    @router.post("/videos")
    async def create(request: Request):
        body, files, form = await read_body(request)
        return await submit(new_job_id(), body, files, form)

    @router.get("/videos")
    async def list_videos(request: Request):
        q = request.query_params
        unknown = sorted(set(q) - {"after", "limit", "order"})
        if unknown:
            raise ApiError(400, "unknown_parameter", f"unknown query parameter(s) {unknown}; valid: after, "
                                                     f"limit, order")
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, "invalid_request", f"order must be asc or desc, got {order!r}", "order")
        try:
            limit_n = int(q.get("limit", "20"))
        except ValueError:
            limit_n = 0
        if not 1 <= limit_n <= 100:
            raise ApiError(400, "invalid_request", f"limit must be an integer in [1, 100], got "
                                                   f"{q.get('limit')!r}", "limit")
        try:
            jobs, more = store.page(q.get("after"), limit_n, order)
        except ValueError as e:
            raise ApiError(400, "invalid_request", str(e), "after") from None
        positions = store.queue_positions()
        data = [video_object(j, positions) for j in jobs]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    @router.post("/videos/edits")
    async def edit(request: Request):
        """Video-to-video on `video`: its frame count and size unless the body gives others."""
        body, files, form = await read_body(request)
        job_id = new_job_id()
        with files_removed_on_refusal(job_id):
            check_room()
            body, source = await source_video(job_id, "init_video", body, files)
            info = await run_in_threadpool(probe_video, source)
            body = typed_form_fields(body) if form else body
        defaults = {} if {"seconds", "frames"} & set(body) else {"frames": info.num_frames}
        if not {"size", "res"} & set(body):
            defaults["size"] = f"{info.width}x{info.height}"
        return await submit(job_id, {**defaults, **body}, files, False, owned={"init_video": source})

    @router.post("/videos/extensions")
    async def extend(request: Request):
        """`video` continued by `seconds` more; its frames at the server's fps are kept (whole tokens)."""
        body, files, form = await read_body(request)
        job_id = new_job_id()
        with files_removed_on_refusal(job_id):
            check_room()
            body, source = await source_video(job_id, "extend", body, files)
            new = parse_seconds(body.pop("seconds", None))
            info = await run_in_threadpool(probe_video, source)
            kept = (await run_in_threadpool(frames_at_rate, source, config.fps, 10**6)).shape[0]
            body = typed_form_fields(body) if form else body
        defaults = {"frames": kept + max(1, round(new * config.fps))}
        if not {"size", "res"} & set(body):
            defaults["size"] = f"{info.width}x{info.height}"
        return await submit(job_id, {**defaults, **body}, files, False, owned={"extend": source})

    @router.post("/videos/characters")
    async def create_character():
        raise ApiError(501, "not_implemented", "characters are not supported by this server")

    @router.get("/videos/characters/{character_id}")
    async def get_character(character_id: str):
        raise ApiError(501, "not_implemented", "characters are not supported by this server")

    @router.get("/videos/{video_id}")
    async def retrieve(video_id: str):
        return video_object(find(video_id))

    @router.delete("/videos/{video_id}")
    async def delete(video_id: str):
        find(video_id)
        if store.delete(video_id) is None:
            raise ApiError(404, "not_found", f"no video {video_id!r} on this server", "video_id")
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @router.get("/videos/{video_id}/content")
    async def content(video_id: str, request: Request):
        job = find(video_id)
        variant = request.query_params.get("variant", "video")
        if variant == "spritesheet":
            raise ApiError(501, "not_implemented", "the spritesheet variant is not supported by this server",
                           "variant")
        if variant not in ("video", "thumbnail"):
            raise ApiError(400, "invalid_request", f"variant must be video, thumbnail or spritesheet, got "
                                                   f"{variant!r}", "variant")
        if job.status != "completed":
            raise ApiError(409, "video_not_ready", f"video {video_id!r} is {job.status}; its content exists "
                                                   f"once it is completed", "video_id")
        if variant == "thumbnail":
            return FileResponse(store.thumbnail_path(video_id), media_type="image/jpeg")
        return FileResponse(store.video_path(video_id), media_type="video/mp4",
                            filename=f"{video_id}.mp4", content_disposition_type="inline")

    @router.post("/videos/{video_id}/remix")
    async def remix(video_id: str, request: Request):
        source = find(video_id)
        body, files, form = await read_body(request)
        if files:
            raise ApiError(400, "invalid_request",
                "a remix takes no files: it starts from the video it remixes")
        try:
            body = typed_form_fields(body) if form else dict(body)
        except ValueError as e:
            raise ApiError(400, "invalid_request", str(e)) from None
        spec = source.spec
        defaults = {"seed": spec.seed, "negative_prompt": spec.negative_prompt}
        if not {"seconds", "frames"} & set(body):
            defaults["frames"] = spec.frames
        if not {"size", "res"} & set(body):
            defaults["size"] = spec.size
        for key in ("steps", "cfg", "sampler"):
            if getattr(spec, key) is not None:
                defaults[key] = getattr(spec, key)
        job_id = new_job_id()
        check_room()
        source_file = link_finished(source, store.upload_path(job_id, "init_video", ".mp4"))
        return await submit(job_id, {**defaults, **body}, {}, False, owned={"init_video": str(source_file)},
                            remixed_from=video_id)

    @router.get("/videos/{video_id}/events")
    async def events(video_id: str, request: Request):
        find(video_id)

        async def stream():
            seen = None
            while not await request.is_disconnected():
                job = store.get(video_id)
                if job is None:
                    yield f"event: deleted\ndata: {json.dumps({'id': video_id, 'deleted': True})}\n\n"
                    return
                if job.version != seen:
                    seen = job.version
                    yield f"data: {json.dumps(video_object(job))}\n\n"
                if job.status in FINISHED:
                    return
                await asyncio.sleep(EVENT_POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
