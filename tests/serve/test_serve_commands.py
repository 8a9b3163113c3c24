"""`xinzhou serve` and `xinzhou chat` as a user runs them: real processes over a tiny checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from xinzhou import cli
from xinzhou.serve.launch import free_port

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow  # two interpreters importing torch: ~30 s on the shared CI machine
def test_serve_command(tiny_checkpoint):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "xinzhou", "serve", "--model", str(tiny_checkpoint), "--port",
                             str(port), "--api-key", "k", "--served-model-name", "tiny", "--log-level", "warning",
                             "--threads", "1"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        assert httpx.get(url + "/v1/models").status_code == 401
        c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=60)
        r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert r.usage.completion_tokens <= 5 and r.choices[0].finish_reason in ("length", "stop")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"serving 'tiny' on http://127.0.0.1:{port}" in out


def test_commands_reject_bad_arguments_before_loading_anything(tmp_path, tiny_checkpoint, capsys):
    assert cli.main(["serve", "--model", str(tmp_path)]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err
    assert cli.main(["chat", "--model", str(tiny_checkpoint), "--tools", "shell"]) == 2
    assert "unknown tool" in capsys.readouterr().err


def test_chat_command_reads_turns_from_stdin(tiny_checkpoint):
    turns = "hello\nwhat is 2+2?\n/reset\nagain\n"
    r = subprocess.run([sys.executable, "-m", "xinzhou", "chat", "--model", str(tiny_checkpoint), "--max-tokens",
                        "6", "--seed", "0", "--tools", "calculator"], input=turns, env=ENV, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "tools: calculator" in r.stdout
    assert r.stdout.count("step(s))") == 3 and "(conversation cleared)" in r.stdout
