"""Running the server: load a checkpoint into a backend, and run uvicorn in the foreground
(``xinzhou serve``) or on a background thread (:class:`ServerThread`, for tests, benchmarks and notebooks).

Loopback (127.0.0.1) is the default host: a model server with no key open to the network is a free GPU (or CPU)
for anyone who finds it, so binding elsewhere without ``api_key`` logs a warning.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI

from xinzhou.serve.app import create_app
from xinzhou.serve.backend import Backend, EngineBackend, ProcessEngineBackend
from xinzhou.serve.limits import ServerConfig

log = logging.getLogger("xinzhou.serve")


def load_backend(model: str | Path, *, model_id: str | None = None, dtype: torch.dtype | None = None,
                 process: bool = True, threads: int | None = None,
                 **engine_options: Any) -> ProcessEngineBackend | EngineBackend:
    """A backend over the checkpoint directory ``model`` (which needs ``tokenizer.json``): the engine in a child
    process (``process=True``, what ``xinzhou serve`` does; ``threads`` sets its torch threads) or on a thread of
    this one. ``engine_options`` are :class:`~xinzhou.engine.EngineConfig` fields (``max_num_seqs``,
    ``max_model_len``, ...). The model id defaults to the directory's name."""
    path = Path(model)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a checkpoint directory (no config.json)")
    if not (path / "tokenizer.json").is_file():
        raise ValueError(f"{path} has no tokenizer.json; the server needs the checkpoint's tokenizer")
    model_id = model_id or path.resolve().name
    if process:
        return ProcessEngineBackend(path, model_id, threads=threads, dtype=dtype, **engine_options)
    from xinzhou.engine import LLM  # noqa: PLC0415

    if threads is not None:
        torch.set_num_threads(threads)
    return EngineBackend(LLM(path, dtype=dtype, **engine_options).engine, model_id)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(backend: Backend, config: ServerConfig | None = None, *, host: str = "127.0.0.1",
          port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C)."""
    config = config or ServerConfig()
    if not is_loopback(host) and config.api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model", host)
    uvicorn.run(create_app(backend, config), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """Run an app with uvicorn on a background thread: ``with ServerThread(app) as srv: srv.url``."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int | None = None,
                 log_level: str = "warning") -> None:
        self.host, self.port = host, port or free_port(host)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level=log_level, lifespan="on",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="xinzhou-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
