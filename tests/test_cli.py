"""The command line: `xinzhou info` on registry names and checkpoints, `xinzhou verify` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

from xinzhou.cli import main


def test_info_registry_json(capsys):
    assert main(["info", "minimax-text-01", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["pattern"] == "LLLLLLLS" * 10 and s["kv_bytes_per_token"] == 40 * 1024
    assert round(s["params_total"] / 1e9) == 456


def test_info_checkpoint_and_bad_name(capsys):
    from xinzhou.assets import GOLDEN_TEXT01

    assert main(["info", str(GOLDEN_TEXT01)]) == 0
    out = capsys.readouterr().out
    assert "(LLLS) x 2" in out and "6 lightning" in out
    assert main(["info", "no-such-model"]) == 2
    assert "registered:" in capsys.readouterr().out


def test_verify_passes_as_a_console_script():
    r = subprocess.run([sys.executable, "-m", "xinzhou", "verify"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failed" in r.stdout
