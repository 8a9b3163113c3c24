"""Serving benchmark: `xinzhou serve` against `transformers serve --continuous-batching` on the same checkpoint,
same prompts, same client, one server at a time, reported side by side as ratios.

Why: the server adds HTTP, SSE, chat rendering and streaming parsing on top of the engine; what users see is
tokens/s and latency through that whole path under concurrency. The peer is transformers' own OpenAI-compatible
server with its continuous-batching mode (paged attention), the closest CPU-runnable equivalent.

Setup: a debug-m2-shaped model (4 layers, hidden 256, 16 experts top-4, GQA 4:2, partial rotary 32 of 64, which
transformers' `minimax_m2` computes exactly) with random weights, a 2048-entry byte-level BPE with the M2 special
tokens and our chat template, saved with `save_pretrained`. Each level runs `2 * concurrency` (at least 4)
streaming chat requests with `concurrency` clients in flight; every request asks for `--max-tokens` new tokens
(temperature 1, top_p 1, no early stop: xinzhou gets `ignore_eos`, transformers has no EOS in this checkpoint's
config) and tokens are counted from the servers' own `usage`. Both servers run as separate processes with the same
torch thread count (`--threads`, default 1: on 2 shared cores two threads make both engines far slower).

The client is a bare asyncio socket that does almost nothing per token (httpx's line parsing cost about 1 ms of
client CPU per token, which on a small machine is taken from whichever server is faster). Both servers stay up;
per level each is measured `--rounds` times, alternating, and the best round counts (the reference machine is
shared: other jobs come and go).

Reported per level: aggregate completion tokens/s (all tokens / wall time), median time to first token (first
read carrying text), median request latency, and the ceiling: the tokens/s of a decode step made of nothing but
the checkpoint's weight products at batch = concurrency (``floors.py``) and, in brackets, its ratio to
transformers: no server whose steps run torch's kernels can beat transformers by more here.

Usage::

    python benchmarks/serve.py                       # about 3-6 minutes on 2 shared CPU cores
    python benchmarks/serve.py --levels 1,8 --max-tokens 32 --skip-peer
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from floors import products_step_seconds  # benchmarks/floors.py, beside this script

from xinzhou.serve.launch import free_port

TOPICS = ["the sea", "mountains", "a robot", "tea", "rain", "old maps", "bicycles", "the moon", "bees", "winter",
          "lanterns", "a library", "trains", "salt", "gardens", "owls"]


def build_checkpoint(path: Path) -> Path:
    import xinzhou
    from xinzhou.chat import save_chat_template
    from xinzhou.data.corpus import default_corpus
    from xinzhou.data.tokenizer import train_tokenizer

    tok = train_tokenizer(default_corpus(), 2048)
    model = xinzhou.Model(xinzhou.get_config("debug-m2", vocab_size=tok.vocab_size)).eval()
    model.reset_parameters(seed=0)
    model.save_pretrained(path)
    tok.save(path)
    save_chat_template(path)
    return path


@dataclass
class Result:
    tokens: int
    ttft: float
    latency: float


@dataclass
class Level:
    concurrency: int
    tokens_per_s: float
    ttft_ms: float
    latency_s: float
    requests: int


CONTENT = re.compile(rb'"(?:reasoning_)?content":"[^"]')


async def one_request(url: str, model: str, i: int, max_tokens: int, extra: dict) -> Result:
    """One streaming request over a bare asyncio socket: the client must cost next to nothing per token, or on a
    small machine it steals CPU from the faster server. The time to first token is the first read that carries
    text; tokens come from the final ``usage`` chunk."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": f"Write a long story about "
                                                     f"{TOPICS[i % 16]}."}],
                       "max_tokens": max_tokens, "temperature": 1.0, "top_p": 1.0, "stream": True,
                       "stream_options": {"include_usage": True}, "seed": i, **extra}).encode()
    host, port = url.removeprefix("http://").split(":")
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    ttft, parts = None, []
    while data := await reader.read(65536):
        parts.append(data)
        if ttft is None and CONTENT.search(data):
            ttft = time.perf_counter() - t0
    latency = time.perf_counter() - t0
    writer.close()
    raw = b"".join(parts)
    head, _, rest = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{head[:200]!r} {rest[:300]!r}")
    usage = [json.loads(line[6:]) for line in _dechunk(rest, head).split(b"\n") if b'"usage":{' in line]
    return Result(usage[-1]["usage"]["completion_tokens"], ttft or latency, latency)


def _dechunk(body: bytes, head: bytes) -> bytes:
    if b"chunked" not in head.lower():
        return body
    out, pos = [], 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[end + 2 : end + 2 + size])
        pos = end + 4 + size


async def run_level(url: str, model: str, concurrency: int, n_requests: int, max_tokens: int, extra: dict) -> Level:
    queue = list(range(n_requests))
    results: list[Result] = []

    async def worker() -> None:
        while queue:
            results.append(await one_request(url, model, queue.pop(0), max_tokens, extra))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return Level(concurrency, sum(r.tokens for r in results) / wall, 1000 * statistics.median(r.ttft for r in results),
                 statistics.median(r.latency for r in results), len(results))


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


class Server:
    """A server process on a free loopback port (``with Server(...) as srv``), warmed up once it answers."""

    def __init__(self, name: str, cmd: list[str], model: str, extra: dict, threads: int, log: Path) -> None:
        self.name, self.model, self.extra, self.port = name, model, extra, free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        with open(log, "w") as f:
            self.proc = subprocess.Popen([*cmd, "--port", str(self.port)], env=env, stdout=f, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        wait_up(self.url, self.proc)
        asyncio.run(run_level(self.url, self.model, 2, 2, 8, self.extra))  # first-call allocation, compilation
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def measure(self, concurrency: int, max_tokens: int) -> Level:
        n = max(4, 2 * concurrency)
        level = asyncio.run(run_level(self.url, self.model, concurrency, n, max_tokens, self.extra))
        print(f"  {self.name:12s} concurrency {concurrency:3d}: {level.tokens_per_s:8.1f} tok/s, TTFT "
              f"{level.ttft_ms:7.0f} ms, latency {level.latency_s:6.2f} s ({n} requests)", flush=True)
        return level


def compare(servers: list[Server], levels: list[int], rounds: int, max_tokens: int) -> list[list[Level]]:
    """Per level, ``rounds`` alternating measurements of every server (the order flips each round, so a burst of
    load from elsewhere on a shared machine does not always hit the same one); the best round of each counts."""
    best: list[list[Level]] = [[] for _ in servers]
    for c in levels:
        runs: list[list[Level]] = [[] for _ in servers]
        for r in range(rounds):
            order = range(len(servers)) if r % 2 == 0 else reversed(range(len(servers)))
            for i in order:
                runs[i].append(servers[i].measure(c, max_tokens))
        for i, rs in enumerate(runs):
            best[i].append(max(rs, key=lambda lv: lv.tokens_per_s))
    return best


def products_rates(checkpoint: Path, levels: list[int], threads: int) -> dict[int, float]:
    """Tokens/s of a decode step made only of the checkpoint's weight products at batch = concurrency
    (:mod:`floors`, weights laid out as the engine lays them): no server, engine, prefill or attention. Its ratio
    to transformers' measured tokens/s bounds the ratio any server built on torch's kernels could reach."""
    import torch

    import xinzhou
    from xinzhou.engine.runner import input_major_

    torch.set_num_threads(threads)
    model = xinzhou.from_pretrained(checkpoint).eval()
    input_major_(model)
    return {c: c / products_step_seconds(model, c) for c in levels}


def table(ours: list[Level], peer: list[Level] | None, products: dict[int, float]) -> str:
    if peer is None:
        rows = ["| concurrency | xinzhou tok/s | TTFT p50 | latency p50 |", "|---:|---:|---:|---:|"]
        rows += [f"| {a.concurrency} | {a.tokens_per_s:.1f} | {a.ttft_ms:.0f} ms | {a.latency_s:.2f} s |" for a in ours]
        return "\n".join(rows)
    rows = ["| concurrency | xinzhou tok/s | transformers tok/s | ratio | TTFT p50 xinzhou / transformers | "
            "latency p50 xinzhou / transformers | products only tok/s (ceiling) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for a, b in zip(ours, peer):
        top = products[a.concurrency]
        rows.append(f"| {a.concurrency} | {a.tokens_per_s:.1f} | {b.tokens_per_s:.1f} | "
                    f"**{a.tokens_per_s / b.tokens_per_s:.2f}×** | {a.ttft_ms:.0f} / {b.ttft_ms:.0f} ms | "
                    f"{a.latency_s:.2f} / {b.latency_s:.2f} s | {top:.0f} ({top / b.tokens_per_s:.2f}×) |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="reuse a checkpoint (default: build one)")
    p.add_argument("--levels", default="1,8,32", help="concurrency levels (default 1,8,32)")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per request (default 64)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server (default 1)")
    p.add_argument("--rounds", type=int, default=2, help="alternating measurements per level; the best counts")
    p.add_argument("--skip-peer", action="store_true", help="only measure xinzhou")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = p.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="xinzhou-serve-bench-"))
    ckpt = args.checkpoint or build_checkpoint(tmp / "debug-m2")
    model = str(ckpt)
    print(f"checkpoint {ckpt}; {args.max_tokens} new tokens per request; {args.threads} torch thread(s) per server",
          flush=True)
    ours = Server("xinzhou", [sys.executable, "-m", "xinzhou", "serve", "--model", model, "--served-model-name", model,
                              "--threads", str(args.threads), "--log-level", "warning"], model, {"ignore_eos": True},
                  args.threads, tmp / "xinzhou.log")
    servers = [ours]
    if not args.skip_peer:
        servers.append(Server("transformers", ["transformers", "serve", model, "--device", "cpu", "--host",
                                               "127.0.0.1", "--continuous-batching"], model, {}, args.threads,
                              tmp / "transformers.log"))
    with contextlib.ExitStack() as stack:
        for srv in servers:
            stack.enter_context(srv)
        results = compare(servers, args.levels, args.rounds, args.max_tokens)
        # the ceiling column needs the peer's numbers; measured with both servers idle, still up
        products = products_rates(ckpt, args.levels, args.threads) if len(servers) > 1 else {}
    ours, peer = results[0], (results[1] if len(results) > 1 else None)
    out = table(ours, peer, products)
    print("\n" + out)
    if args.markdown is not None:
        args.markdown.write_text(out + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
