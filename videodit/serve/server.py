"""One running server: the loaded pipeline, its job store, the batcher thread and uvicorn.

    server = Server(load_pipeline("default"), ServeConfig(out=Path("served")))
    url = server.start("127.0.0.1", 0)   # in background threads; or server.serve(...) to block
    ...
    server.stop()
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from videodit.pipeline import Pipeline
from videodit.serve.admission import pass_token_limit
from videodit.serve.app import ServeConfig, build_app
from videodit.serve.batcher import Batcher
from videodit.serve.jobs import JobStore


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), so the URL is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class Server:
    """The pipeline served over HTTP; jobs run on a batcher thread beside uvicorn's event loop."""

    def __init__(self, pipe: Pipeline, config: ServeConfig):
        self.pipe, self.config = pipe, config
        self.store = JobStore(config.out, config.max_queue)
        budget = pass_token_limit(config.memory, config.token_budget)
        self.batcher = Batcher(pipe, self.store, config.fps, budget)
        self.app = build_app(pipe, self.store, config)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._uvicorn: uvicorn.Server | None = None

    def start_batcher(self) -> None:
        thread = threading.Thread(target=self.batcher.run, args=(self._stop,), name="batcher", daemon=True)
        thread.start()
        self._threads.append(thread)

    def serve(self, host: str, port: int, on_ready=print) -> None:
        """Serve until interrupted; `on_ready(message)` gets the URL once the socket listens."""
        sock = bind(host, port)
        on_ready(f"videodit server on {url_of(sock)}/ (API: {url_of(sock)}/v1)")
        self.start_batcher()
        self._uvicorn = uvicorn.Server(self._uvicorn_config())
        try:
            self._uvicorn.run(sockets=[sock])
        finally:
            self.stop()

    def start(self, host: str = "127.0.0.1", port: int = 0, batcher: bool = True) -> str:
        """Serve from background threads -> the base URL (tests, benchmarks). `batcher` False: jobs queue
        but nothing runs them (until `start_batcher`)."""
        sock = bind(host, port)
        self._uvicorn = uvicorn.Server(self._uvicorn_config())
        thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [sock]}, name="uvicorn",
                                  daemon=True)
        thread.start()
        self._threads.append(thread)
        while not self._uvicorn.started:
            if not thread.is_alive():
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        if batcher:
            self.start_batcher()
        return url_of(sock)

    def _uvicorn_config(self) -> uvicorn.Config:
        return uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2)

    def stop(self) -> None:
        """Stop serving and running; what is queued stays on disk for the next start."""
        self._stop.set()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=30)
        self._threads.clear()
