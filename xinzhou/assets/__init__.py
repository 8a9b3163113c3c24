"""Bundled data: ``text01-tiny-a``, a tiny random MiniMax-Text-01 checkpoint in the original remote-code layout
with the outputs of MiniMax's official code on it (see its README). It is the ground truth for the Text-01/M1
family and lets `xinzhou verify` check an install with no downloads."""

from pathlib import Path

GOLDEN_TEXT01 = Path(__file__).parent / "text01-tiny-a"
