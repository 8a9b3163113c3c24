"""An end-to-end pretraining run on a slice of the bundled corpus: it learns, logs metrics (loss, lr, grad norm,
tokens/s, per-expert load, eval loss), draws the loss curve, and exports a Hugging Face checkpoint that
`xinzhou.from_pretrained` and transformers load with the trained model's logits, with the tokenizer and chat
template included. The `debug` recipe is full-rotary: transformers' `minimax` ignores partial rotary.
Run: pytest tests/train/test_pretrain.py"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from train_helpers import debug_config

import xinzhou
from xinzhou.data.tokenizer import Tokenizer
from xinzhou.train.metrics import read_jsonl
from xinzhou.train.pretrain import pretrain


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_corpus):
    out = tmp_path_factory.mktemp("pretrain")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full-rotary config exports without the transformers-divergence warning
        result = pretrain(debug_config(out, small_corpus, max_steps=30, eval_every=10, save_every=15))
    return result


def test_the_run_learns(run):
    evals = [r["eval_loss"] for r in read_jsonl(run.out_dir / "metrics.jsonl") if "eval_loss" in r]
    assert len(evals) == 3 and evals[-1] < evals[0] - 0.3
    assert run.final_eval_loss == evals[-1] and run.steps == 30
    assert 3.0 < run.baseline < 6.0  # unigram entropy of the eval targets, nats/token


def test_metrics_and_plot(run):
    records = read_jsonl(run.out_dir / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 31))
    first = steps[0]
    for key in ("loss", "aux_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "tokens_seen", "expert_load"):
        assert key in first
    assert len(first["expert_load"]) == 2 and len(first["expert_load"][0]) == 4  # [layers][experts]
    assert abs(sum(first["expert_load"][0]) - 1) < 1e-3
    assert steps[-1]["tokens_seen"] == 30 * 4 * 64
    assert (run.out_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in sorted((run.out_dir / "checkpoints").iterdir())] == ["step_00000015", "step_00000030"]


def test_export_loads_in_xinzhou_with_the_trained_weights(run):
    exported = xinzhou.from_pretrained(run.export_dir)
    trained = torch.load(run.out_dir / "checkpoints" / "step_00000030" / "model.pt")
    for k, v in exported.state_dict().items():
        assert torch.equal(v, trained[k]), k
    tok = Tokenizer.from_dir(run.export_dir)
    assert tok.chat_template and "]~b]" in tok.chat_template
    cfg = json.loads((run.export_dir / "config.json").read_text())
    assert cfg["eos_token_id"] == tok.eos_id and cfg["bos_token_id"] == tok.bos_id


def test_export_loads_in_transformers_with_identical_logits(run):
    transformers = pytest.importorskip("transformers")
    ours = xinzhou.from_pretrained(run.export_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(run.export_dir, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(run.export_dir)
    tok = Tokenizer.from_dir(run.export_dir)
    text = "Q: What do dogs eat?\nA: Dogs eat meat."
    ids = tok.encode(text)
    assert hf_tok.encode(text, add_special_tokens=False) == ids
    x = torch.tensor([[tok.bos_id, *ids]])
    with torch.no_grad():
        a, b = ours(x).logits, hf(x).logits
    assert ((a - b).abs().max() / a.abs().max()).item() < 1e-4
    chat = hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.startswith("]~!b[") and chat.endswith("]~b]ai\n<think>\n")
