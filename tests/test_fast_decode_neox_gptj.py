"""The fused C decoding step on GPT-NeoX (polyglot-ko's family: parallel or sequential residual,
partial rotate-half rotary, fused query_key_value, exact or tanh GELU, with or without attention
biases) and GPT-J (KoGPT's: one LayerNorm feeding attention and MLP in parallel, interleaved partial
rotary, a head with a bias), on random tiny models made and saved by transformers: step and prefill
logits and caches equal hangpt's PyTorch forward (float32 within 1e-4; bf16 as
test_fast_decode_bf16.py compares), the engine's greedy, beam and sampled tokens equal the PyTorch
path's, and transformers' generate where it draws alike (not plain sampling); rows joining and
leaving a running batch (step_rows) get their tokens alone."""

from dataclasses import replace

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hangpt.checkpoint import load_checkpoint  # noqa: E402
from hangpt.engine import Engine, GenerationConfig, core, fast  # noqa: E402
from hangpt.models import KVCache  # noqa: E402
from hf_models import save_random_model  # noqa: E402
from test_continuous_batching import JOIN_AT, REQUESTS, _collect, _same  # noqa: E402
from test_engine_golden import hf_new_tokens, ours  # noqa: E402
from test_fast_decode import pytestmark, steps_against_pytorch  # noqa: E402,F401
from test_fast_decode_bf16 import (KERNELS, assert_cache_close, assert_logits_close, bf16_decoder,  # noqa: E402
                                   padded_batch)

NEOX = dict(num_attention_heads=4, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
# odd sizes on purpose: head_dim 12, 10 or 16, widths not multiples of the 16-float vector
VARIANTS = {
    "neox-parallel": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        NEOX, hidden_size=48, intermediate_size=100, num_hidden_layers=3, use_parallel_residual=True,
        rotary_pct=0.5)),
    "neox-sequential": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        NEOX, hidden_size=40, intermediate_size=72, num_hidden_layers=2, use_parallel_residual=False,
        rotary_pct=0.4)),
    "neox-no-bias-tanh-gelu": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        NEOX, hidden_size=64, intermediate_size=80, num_hidden_layers=2, attention_bias=False, hidden_act="gelu_new",
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0, "partial_rotary_factor": 0.25})),
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(n_embd=48, n_layer=3, n_head=4, rotary_dim=4, n_inner=100,
                                                   n_positions=128, bos_token_id=1, eos_token_id=2)),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory, tiny_tokenizer):
    """(transformers' model, the folder it saved) of each variant."""
    config_cls, model_cls, extra = VARIANTS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_random_model(folder, tiny_tokenizer, getattr(transformers, config_cls), getattr(transformers, model_cls),
                           **extra)
    return hf, folder


def loaded(folder, dtype="float32"):
    ckpt = load_checkpoint(folder, dtype=dtype)
    assert fast.FastDecoder.supports(ckpt.model)
    return ckpt


def c_decoder(model):
    decoder = fast.FastDecoder.for_model(model, fast.library())
    decoder.bind(lambda: pytest.fail("the rotary families read the head as nn.Linear keeps it"))
    return decoder


def test_step_equals_pytorch_forward_with_padding_and_reorder(pair):
    model = loaded(pair[1]).model
    decoder = c_decoder(model)
    B, P, total = 3, 7, 13
    padding = torch.ones(B, total, dtype=torch.bool)
    padding[0, :4], padding[1, :1] = False, False  # left padding of different lengths
    positions = (padding[:, :P].long().cumsum(-1) - 1).clamp(min=0)
    prompt = torch.randint(0, 333, (B, P), generator=torch.Generator().manual_seed(0))
    ours_cache, ref = KVCache(model.config, B, total), KVCache(model.config, B, total)
    for logits, argmax, expected, length in steps_against_pytorch(model, decoder, prompt, padding, positions,
                                                                  ours_cache, ref, 5):
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)
        assert torch.equal(argmax, logits.argmax(-1))
        torch.testing.assert_close(ours_cache.k[:, :, :, :length], ref.k[:, :, :, :length], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours_cache.v[:, :, :, :length], ref.v[:, :, :, :length], atol=1e-5, rtol=1e-5)


def test_prefill_equals_pytorch_forward_with_padding(pair):
    model = loaded(pair[1]).model
    decoder = c_decoder(model)
    B, P, total = 3, 6, 10
    padding = torch.ones(B, total, dtype=torch.bool)
    padding[0, :3], padding[2, :1] = False, False
    positions = (padding[:, :P].long().cumsum(-1) - 1).clamp(min=0)
    prompt = torch.randint(0, 333, (B, P), generator=torch.Generator().manual_seed(1))
    ours_cache, ref = KVCache(model.config, B, total), KVCache(model.config, B, total)
    with torch.inference_mode():
        logits, argmax = decoder.prefill(prompt, positions, padding, ours_cache)
        expected = model(prompt, position_ids=positions, padding_mask=padding[:, :P], cache=ref).logits[:, -1]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)
    assert torch.equal(argmax, expected.argmax(-1))
    torch.testing.assert_close(ours_cache.k[:, :, :, :P], ref.k[:, :, :, :P], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("controls", [
    dict(max_new_tokens=24),
    dict(max_new_tokens=24, repetition_penalty=1.3, no_repeat_ngram_size=2),
    dict(max_new_tokens=16, num_beams=3, num_return_sequences=2),
    dict(max_new_tokens=16, num_beams=2, do_sample=True, top_k=20, temperature=0.8),
    dict(max_new_tokens=24, do_sample=True, top_k=20, top_p=0.9, temperature=0.8, seed=3),
], ids=["greedy", "penalties", "beam", "beam-sample", "sample"])
def test_engine_tokens_equal_pytorch_path_and_transformers(pair, tiny_tokenizer, controls):
    """The C step, the PyTorch forward and transformers.generate; beam sampling draws from torch's
    global generator, seeded alike. Plain sampling is compared between hangpt's two paths only: its
    exponential race (a row's tokens whatever shares its batch) is not transformers' multinomial
    draw. One prompt at a time (transformers feeds pad tokens to the penalties)."""
    hf, folder = pair
    ckpt = loaded(folder)
    with_c, without = Engine(ckpt.model, ckpt.tokenizer), Engine(ckpt.model, ckpt.tokenizer, fast_decode=False)
    assert with_c.fast_decoder() is not None and without.fast_decoder() is None
    eos = 7
    for text in ["오늘 날씨가 정말", "저는", "언어"]:
        prompt = tiny_tokenizer.encode(text)
        got = []
        for engine in (with_c, without):
            torch.manual_seed(5)
            got.append(ours(engine, [prompt], eos_token_id=eos, **controls))
        assert got[0] == got[1], text
        if "seed" not in controls:
            torch.manual_seed(5)
            assert got[0] == hf_new_tokens(hf, [prompt], eos, **{"do_sample": False, **controls}), text


@pytest.mark.parametrize("kernel", KERNELS)
def test_bf16_step_equals_pytorch_forward_with_padding_and_reorder(pair, kernel):
    model = loaded(pair[1], "bfloat16").model
    decoder = bf16_decoder(model, kernel)
    # no float32 copy: the matrices C reads (the fused query_key_value too) are the model's own bf16 tensors
    matrices = {p.data_ptr() for p in model.parameters() if p.dim() == 2}
    bound = [t for t in decoder._weights if t is not None and t.dim() == 2]
    assert bound and all(t.dtype == torch.bfloat16 and t.data_ptr() in matrices for t in bound)
    prompt, padding, positions, (ours_cache, ref) = padded_batch(model, 7, 20, (4, 1, 0), seed=1)
    for logits, argmax, expected, length in steps_against_pytorch(model, decoder, prompt, padding, positions,
                                                                  ours_cache, ref, 10):
        assert_logits_close(logits, expected)
        assert torch.equal(argmax, logits.argmax(-1))
        assert_cache_close(ours_cache, ref, length)


@pytest.mark.parametrize("kernel", KERNELS)
def test_bf16_prefill_equals_pytorch_forward(pair, kernel):
    model = loaded(pair[1], "bfloat16").model
    decoder = bf16_decoder(model, kernel)
    P = 6
    prompt, padding, positions, (ours_cache, ref) = padded_batch(model, P, 10, (3, 0, 1), seed=2)
    with torch.inference_mode():
        logits, argmax = decoder.prefill(prompt, positions, padding, ours_cache)
        expected = model(prompt, position_ids=positions, padding_mask=padding[:, :P], cache=ref).logits[:, -1]
    assert_logits_close(logits, expected, 0.03)
    assert torch.equal(argmax, logits.argmax(-1))
    assert_cache_close(ours_cache, ref, P)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("controls", [dict(), dict(num_beams=3, num_return_sequences=2)], ids=["greedy", "beam"])
def test_bf16_engine_tokens_equal_with_and_without_the_c_step(pair, kernel, controls, monkeypatch):
    """The decoding steps in C, the prompts prefilled by PyTorch in both engines: the C prefill
    attends step by step where torch's fused SDPA kernel rounds otherwise (3% above), and these
    models' bf16 logits tie exactly now and then (coarse bf16 steps at |logit| ~ 10), so one
    rounding flip in the prompt would change a greedy token. The C step's own logits equal torch's
    bit for bit on most steps here (the exact GELU ones on all), hence equal tokens."""
    monkeypatch.setattr(core, "PREFILL_TOKENS", 0)
    ckpt = loaded(pair[1], "bfloat16")
    bf16_decoder(ckpt.model, kernel)  # skips the native kernel where the library has none
    with_c = Engine(ckpt.model, ckpt.tokenizer)
    with_c.fast_decoder().native_bf16 = kernel == "native"
    prompts = ["오늘 날씨가", "저는 한국어를 공부하고", "언어"]
    config = GenerationConfig(max_new_tokens=24, eos_token_id=[], **controls)
    got = with_c.generate(prompts, config)
    expected = Engine(ckpt.model, ckpt.tokenizer, fast_decode=False).generate(prompts, config)
    assert [[c.token_ids for c in group] for group in got] == [[c.token_ids for c in group] for group in expected]


def test_rows_joining_and_leaving_mid_decode_get_their_tokens_alone(pair, monkeypatch):
    """Continuous batching: every step of the running batch is one step_rows call of the C step."""
    ckpt = loaded(pair[1])
    engine = Engine(ckpt.model.eval(), ckpt.tokenizer)
    configs = [(prompt, GenerationConfig(**settings)) for prompt, settings in REQUESTS]
    alone = {}
    for i, (prompt, config) in enumerate(configs):
        for e in engine.stream(prompt, config):
            _collect([e], alone.setdefault(i, {}))
    calls, real = [], fast.FastDecoder.step_rows
    monkeypatch.setattr(fast.FastDecoder, "step_rows", lambda self, tokens, *rest: (
        calls.append(tokens.numel()), real(self, tokens, *rest))[1])
    with torch.no_grad():
        session, joined, owner, step = engine.session(), {}, {}, 0
        while step <= max(JOIN_AT) or session:
            joining = [i for i, at in enumerate(JOIN_AT) if at == step]
            for i, indices in zip(joining, session.add_many([configs[i] for i in joining])):
                for k, index in enumerate(indices):
                    owner[index] = (i, k)
            for e in session.step():
                i, k = owner[e.index]
                _collect([replace(e, index=k)], joined.setdefault(i, {}))
            step += 1
    assert max(calls) >= 4  # rows of different lengths decoded together in C
    for i in alone:
        _same(joined[i], alone[i])

