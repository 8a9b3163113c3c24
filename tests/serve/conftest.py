"""Servers for the serve tests: a real uvicorn on a free loopback port, over a scripted stand-in or a real tiny
model (a debug-m2-shaped checkpoint with a byte-level BPE tokenizer and the M2 chat template)."""

from __future__ import annotations

from pathlib import Path

import pytest

import xinzhou
from tests.serve.scripted import ScriptedBackend
from xinzhou.serve import ServerConfig, create_app
from xinzhou.serve.launch import ServerThread, load_backend


@pytest.fixture
def scripted():
    """``scripted(replies, config=None, **backend_kw) -> (server, backend)``; servers stop after the test."""
    servers: list[ServerThread] = []

    def make(replies, config: ServerConfig | None = None, **kw):
        backend = ScriptedBackend(replies, **kw)
        server = ServerThread(create_app(backend, config)).start()
        servers.append(server)
        return server, backend

    yield make
    for s in servers:
        s.stop()


def make_checkpoint(path: Path, *, seed: int = 0) -> Path:
    """A tiny random M2 checkpoint with tokenizer and chat template (about a second to build)."""
    from xinzhou.chat import save_chat_template
    from xinzhou.data.corpus import default_corpus
    from xinzhou.data.tokenizer import train_tokenizer

    tok = train_tokenizer(default_corpus()[:200], 400)
    cfg = xinzhou.get_config("debug-m2", vocab_size=tok.vocab_size, hidden_size=64, num_heads=4, num_kv_heads=2,
                             head_dim=16, rotary_dim=8, moe_intermediate_size=32, num_layers=2,
                             max_position_embeddings=4096)
    model = xinzhou.Model(cfg).eval()
    model.reset_parameters(seed=seed)
    model.save_pretrained(path)
    tok.save(path)
    save_chat_template(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny-m2"))


@pytest.fixture(scope="module")
def tiny_server(tiny_checkpoint):
    """A real engine in its own process behind the server, as `xinzhou serve` runs it (one torch thread: the test
    machine is small and shared)."""
    backend = load_backend(tiny_checkpoint, model_id="tiny", max_num_seqs=64, threads=1)
    with ServerThread(create_app(backend, ServerConfig())) as server:
        yield server, backend
