"""Tiny random models and a reference greedy decoder (full forwards, no cache) for the engine tests."""

from __future__ import annotations

import pytest
import torch

import xinzhou

VOCAB = 300


def tiny_model(name: str = "debug-text01", seed: int = 0, **kw) -> xinzhou.Model:
    kw = {"hidden_size": 64, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "rotary_dim": 8, "moe_intermediate_size": 32,
              "vocab_size": VOCAB, "initializer_range": 0.1} | kw
    cfg = xinzhou.get_config(name, **kw)
    model = xinzhou.Model(cfg).eval()
    model.reset_parameters(seed=seed)
    return model


@pytest.fixture(scope="module")
def text01() -> xinzhou.Model:
    return tiny_model("debug-text01")


@pytest.fixture(scope="module")
def m2() -> xinzhou.Model:
    return tiny_model("debug-m2")


@torch.no_grad()
def greedy_reference(model: xinzhou.Model, prompt: list[int], n: int) -> list[int]:
    """Step-by-step argmax of full forwards over the whole sequence (no cache)."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def prompts_of(lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and a shared, busy machine makes multi-threaded barriers stall."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ByteTokenizer:
    """UTF-8 bytes as token ids (a transformers-style ``encode``/``decode``); ids >= 256 decode to "?"."""

    eos_token_id = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return b"".join(bytes([i]) if i < 256 else b"?" for i in ids).decode("utf-8", errors="replace")
