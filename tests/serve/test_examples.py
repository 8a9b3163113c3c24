"""The example clients run unmodified (as ``__main__``) against a server: a scripted model makes a forced tool call,
then answers."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from tests.serve.scripted import completion
from xinzhou.chat import GENERATION_PROMPT

ROOT = Path(__file__).resolve().parents[2]
THINK = "I should look up the weather."
CALL_REST = '<parameter name="city">Paris</parameter>\n</invoke>\n</minimax:tool_call>[e~['


def reply(prompt: str) -> str:
    """A model that thinks, then (forced or not) calls get_weather, then answers once it has the result."""
    if "<response>" in prompt:
        return completion("The tool answered.", "Sunny and 21 °C in Paris.")
    if prompt.endswith(GENERATION_PROMPT):
        return completion(THINK, "", [("get_weather", {"city": "Paris"})])
    return ('get_weather">\n' if prompt.endswith('<invoke name="') else "") + CALL_REST


@pytest.mark.parametrize("script", ["openai_client.py", "anthropic_client.py"])
def test_example_tool_round_trip(scripted, script, monkeypatch, capsys):
    server, backend = scripted(reply)
    base = server.url + ("/v1" if script.startswith("openai") else "")
    monkeypatch.setattr(sys, "argv", [script, "--base-url", base])
    runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    out = capsys.readouterr().out
    assert f"thinking: {THINK}" in out and "→ get_weather" in out
    assert "Sunny and 21 °C in Paris." in out
    assert THINK in backend.prompts[-1]  # the answer's prompt still holds the first turn's thinking
