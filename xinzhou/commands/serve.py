"""Serve a checkpoint over OpenAI- and Anthropic-compatible HTTP APIs (interleaved thinking, tool calls, SSE).

`xinzhou serve --model PATH [--host 127.0.0.1 --port 8000 --api-key KEY]`. Endpoints: POST /v1/chat/completions,
POST /v1/messages, GET /v1/models, GET /health, the OpenAPI schema at /openapi.json and /docs. The key may also
come from the XINZHOU_API_KEY environment variable; clients send it as `Authorization: Bearer KEY` or
`x-api-key: KEY`. The host defaults to loopback; bind elsewhere only with a key.
"""

from __future__ import annotations

import argparse
import os
import sys


def setup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH", help="checkpoint directory (with tokenizer.json)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", default=os.environ.get("XINZHOU_API_KEY"),
                        help="require this key (default: $XINZHOU_API_KEY, else no key)")
    parser.add_argument("--served-model-name", default=None, metavar="NAME",
                        help="the model id clients send (default: the checkpoint directory's name)")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="sequences decoded together (default 64)")
    parser.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    parser.add_argument("--max-tokens-limit", type=int, default=32_768, help="largest max_tokens a request may ask")
    parser.add_argument("--max-concurrent-requests", type=int, default=256, help="requests in flight (429 above)")
    parser.add_argument("--max-body-bytes", type=int, default=4 << 20, help="largest request body (413 above)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of the engine process (default: torch's choice)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def main(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    if not (Path(args.model) / "config.json").is_file():  # before the heavy imports: fail fast
        print(f"error: {args.model} is not a checkpoint directory (no config.json)", file=sys.stderr)
        return 2
    from xinzhou.serve import ServerConfig  # noqa: PLC0415
    from xinzhou.serve.launch import load_backend, serve  # noqa: PLC0415

    try:
        config = ServerConfig(api_key=args.api_key or None, max_body_bytes=args.max_body_bytes,
                              max_tokens_limit=args.max_tokens_limit,
                              default_max_tokens=min(2048, args.max_tokens_limit),
                              max_concurrent_requests=args.max_concurrent_requests)
        backend = load_backend(args.model, model_id=args.served_model_name, threads=args.threads,
                               max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len)
        backend.start()  # load the model now: a checkpoint that cannot be served fails before the port opens
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"serving {backend.model_id!r} on http://{args.host}:{args.port} (OpenAI: /v1/chat/completions, "
          f"Anthropic: /v1/messages, docs: /docs)", file=sys.stderr, flush=True)
    serve(backend, config, host=args.host, port=args.port, log_level=args.log_level)
    return 0
