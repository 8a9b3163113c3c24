"""xinzhou.serve: OpenAI- and Anthropic-compatible HTTP serving of MiniMax-M2 chat models.

Why its own server rather than a proxy in front of a generic one: interleaved thinking only works when the
server reads prior thinking in every client shape, renders it back into the prompt for the current tool chain,
and splits the model's output into reasoning, content and schema-typed tool calls while streaming. Peer servers
get each of these wrong in some way (see shared/reference/interleaved.md §6). Layout:

- ``backend.py``: the :class:`Backend` protocol; the engine in its own process or on a thread
  (``engine_loop.py`` is the loop that owns it).
- ``generation.py``: messages -> prompt -> n parsed choices (shared by both APIs; enforces ``tool_choice``).
- ``openai_protocol.py``, ``anthropic_protocol.py``: request models, conversion, response and stream shapes.
- ``limits.py``, ``errors.py``: the gate (API key, body size, concurrency) and JSON errors in each API's shape.
- ``app.py``: the FastAPI routes; ``launch.py``: load a checkpoint and run uvicorn.

    from xinzhou.serve import EngineBackend, ServerConfig, create_app
"""

from xinzhou.serve.app import create_app
from xinzhou.serve.backend import Backend, Chunk, EngineBackend, ProcessEngineBackend, Stream
from xinzhou.serve.limits import ServerConfig

__all__ = ["Backend", "Chunk", "EngineBackend", "ProcessEngineBackend", "ServerConfig", "Stream", "create_app"]
