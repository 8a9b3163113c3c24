"""Text in and out: stop strings cut the text and end the request, streamed deltas add up to the final text even
across multi-byte characters, the chat agent runs on the engine with state reuse, and `xinzhou generate`
streams to stdout."""

from __future__ import annotations

from tests.engine.conftest import (
    ByteTokenizer,
    greedy_reference,
    tiny_model,
)
from xinzhou.engine import LLM, SamplingParams


def _stop_case(model):
    """A prompt, its greedy 12-token continuation, a stop string taken from inside it and where it first occurs."""
    tok = ByteTokenizer()
    prompt = "The ant is"
    ref = greedy_reference(model, tok.encode(prompt), 12)
    full = tok.decode(ref)
    stop = full[5:7]
    return tok, prompt, ref, full, stop, full.find(stop), LLM(model, tokenizer=tok)


def test_stop_string_cuts_text_and_streams_consistently(text01):
    tok, prompt, ref, full, stop, at, llm = _stop_case(text01)
    out = llm.generate(prompt, SamplingParams(max_tokens=12, temperature=0, stop=[stop]))[0]
    assert out.finish_reason == "stop" and out.text == full[:at]
    assert tok.decode(out.token_ids).startswith(full[: at + len(stop)])
    events = list(llm.stream(prompt, SamplingParams(max_tokens=12, temperature=0, stop=[stop])))
    assert "".join(e.text for e in events) == out.text and events[-1].finish_reason == "stop"


def test_stop_reason_names_the_stop_string_or_token_that_matched(text01):
    tok, prompt, ref, full, stop, at, llm = _stop_case(text01)
    greedy = {"max_tokens": 12, "temperature": 0}
    # a string that never appears, the one that does, and a stop token id the greedy run samples later
    assert tok.decode(ref[: ref.index(ref[9])]).find(stop) >= 0  # the string comes first
    params = SamplingParams(**greedy, stop=["\x00never", stop, ref[9]])
    out = llm.generate(prompt, params)[0]
    assert (out.finish_reason, out.stop_reason, out.text) == ("stop", stop, full[:at])
    events = list(llm.stream(prompt, params))
    assert (events[-1].finish_reason, events[-1].stop_reason) == ("stop", stop)
    assert all(e.stop_reason is None for e in events[:-1])
    # a stop token id (an int), not the model's end-of-sequence token
    first = ref.index(ref[9])
    out = llm.generate(prompt, SamplingParams(**greedy, stop=[ref[9]]))[0]
    assert (out.finish_reason, out.stop_reason, out.token_ids) == ("stop", ref[9], ref[: first + 1])
    # the model's own end-of-sequence token, the length limit: no stop reason
    out = llm.generate(prompt, SamplingParams(**greedy))[0]
    assert (out.finish_reason, out.stop_reason) == ("length", None)
    text01.config.eos_token_id = ref[9]
    try:
        for stop_ids in ([], [ref[9]]):  # also when the request names the end-of-sequence token itself (as vLLM)
            out = LLM(text01, tokenizer=tok).generate(prompt, SamplingParams(**greedy, stop=stop_ids))[0]
            assert (out.finish_reason, out.stop_reason, out.token_ids[-1]) == ("stop", None, ref[9])
        out = LLM(text01, tokenizer=tok).generate(prompt, SamplingParams(**greedy, stop=[ref[9]], ignore_eos=True))[0]
        assert (out.finish_reason, out.stop_reason) == ("stop", ref[9])
    finally:
        text01.config.eos_token_id = None


def test_streamed_text_holds_partial_utf8_until_complete(text01):
    llm = LLM(text01, tokenizer=ByteTokenizer())
    events = list(llm.stream("中文 é", SamplingParams(max_tokens=20, temperature=1.0, seed=0, ignore_eos=True)))
    out = llm.generate("中文 é", SamplingParams(max_tokens=20, temperature=1.0, seed=0, ignore_eos=True))[0]
    assert "".join(e.text for e in events) == out.text


CALL = ('add</think>\n<minimax:tool_call>\n<invoke name="calculator">\n<parameter name="expression">2+2</parameter>\n'
        '</invoke>\n</minimax:tool_call>[e~[')


def test_chat_agent_runs_on_the_engine_with_state_reuse():
    from xinzhou.chat import Agent, UserMessage, builtin_tools
    from xinzhou.data.tokenizer import train_tokenizer

    tok = train_tokenizer(["You are a helpful assistant. What is 2+2? <invoke name=\"calculator\">"] * 4, 300)
    model = tiny_model(vocab_size=tok.vocab_size)
    llm = LLM(model, tokenizer=tok)
    calls = []
    generate = llm.generate

    def generate_with_a_tool_call(prompts, params=None):
        """The engine's generate; the first answer is replaced by a tool call, as a trained model would write."""
        outs = generate(prompts, params)
        calls.append(outs[0])
        if len(calls) == 1:
            outs[0].text, outs[0].finish_reason = CALL, "stop"
        return outs

    llm.generate = generate_with_a_tool_call
    result = Agent(llm, builtin_tools(), max_steps=2,
                   params=SamplingParams(max_tokens=8, temperature=0)).run([UserMessage("What is 2+2?")])
    assert len(result.steps) == 2 and "4" in result.steps[0].tool_messages[0].content
    first, second = calls
    # step 2's prompt extends step 1's: its prompt state is reused and only the call + tool result are prefilled
    assert second.num_cached_tokens == len(first.prompt_token_ids)
    cold = LLM(model, tokenizer=tok, prefix_cache_bytes=0).generate([result.steps[1].prompt],
                                                                    SamplingParams(max_tokens=8, temperature=0))
    assert cold[0].token_ids == second.token_ids and cold[0].text == second.text


def test_generate_command_streams(tmp_path, capsys):
    from xinzhou.cli import main
    from xinzhou.data.tokenizer import train_tokenizer

    tok = train_tokenizer(["All about the ant. Ants live in the ground."] * 4, 300)
    model = tiny_model(vocab_size=tok.vocab_size, rotary_dim=16)  # full rotary: no transformers warning
    model.save_pretrained(tmp_path / "ck")
    tok.save(tmp_path / "ck")
    rc = main(["generate", "--model", str(tmp_path / "ck"), "--prompt", "Ants", "--max-tokens", "6",
               "--temperature", "0"])
    out = capsys.readouterr()
    assert rc == 0 and "[finish: " in out.err
    ids = greedy_reference(model, tok.encode("Ants"), 6)
    expected = tok.decode(ids[: next((i + 1 for i, t in enumerate(ids) if t == tok.eos_id), 6)])
    assert out.out == expected + "\n"
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert main(["generate", "--model", str(tmp_path / "ck"), "--prompt", "x", "--top-p", "2"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err


def test_token_bytes_are_each_tokens_exact_bytes(tmp_path):
    """Byte-level BPE pieces map back to their bytes, even a piece that ends inside a UTF-8 character (whose
    ``decode`` alone shows U+FFFD); special tokens give their text; the bytes of all tokens are the text's bytes.
    The same through each tokenizer kind the engine takes (xinzhou's, ``tokenizers``', transformers')."""
    from xinzhou.data.corpus import default_corpus
    from xinzhou.data.tokenizer import train_tokenizer
    from xinzhou.engine.detokenizer import TokenizerAdapter

    import transformers

    raw = train_tokenizer(default_corpus()[:50], 300)
    raw.save(tmp_path)
    text = "héllo 心舟 ok]~b]"
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for tok in (TokenizerAdapter(raw), TokenizerAdapter(raw.backend), TokenizerAdapter(hf)):
        ids = tok.encode(text)
        pieces = [tok.token_bytes(i) for i in ids]
        assert b"".join(pieces) == text.encode("utf-8")
        assert any(p and p[-1] >= 0x80 and tok.decode([i]).endswith("\ufffd") for p, i in zip(pieces, ids))
        assert tok.token_bytes(raw.special_ids["]~b]"]) == b"]~b]"
