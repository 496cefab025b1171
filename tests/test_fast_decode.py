"""The fused C decoding step (hangpt/engine/decode_step.c) against the PyTorch forward it replaces,
for GPT-2 and the Llama family (grouped- and multi-query attention, Qwen2's q/k/v biases, Qwen3's
q/k norms, tied and untied heads, scaled rotary frequencies): same logits and cache for padded
batches, reordered beams and odd shapes, same tokens through the engine for every strategy,
weights that change in place, and the fallback when no compiler is found."""

import os
import shutil
import warnings

import pytest
import torch

from hangpt.checkpoint import load_checkpoint
from hangpt.engine import Engine, GenerationConfig
from hangpt.engine import fast
from hangpt.checkpoint import save_checkpoint
from hangpt.models import GPT, GPTConfig, KVCache, Llama, LlamaConfig

# a machine with a C compiler must build the step (a compile error fails these tests, not skips them)
pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                                reason="no C compiler here: the engine uses the PyTorch forward")


LLAMA = dict(vocab_size=333, max_position_embeddings=40, hidden_size=36, intermediate_size=50, num_hidden_layers=3,
             num_attention_heads=6, num_key_value_heads=2)
# odd sizes on purpose: widths not multiples of the 16-float vector, head_dim 12, 6, 10 or 14
SHAPES = {
    "gpt2": (GPTConfig, dict(vocab_size=333, n_positions=40, n_embd=36, n_layer=3, n_head=3, n_inner=100)),
    "llama-gqa-llama3-rope": (LlamaConfig, dict(LLAMA, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    "llama-mqa-tied-linear-rope": (LlamaConfig, dict(LLAMA, num_key_value_heads=1, tie_word_embeddings=True,
                                                     rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "qwen2-biases": (LlamaConfig, dict(LLAMA, model_type="qwen2", num_attention_heads=4, head_dim_=10,
                                       tie_word_embeddings=True)),
    "qwen3-qk-norm": (LlamaConfig, dict(LLAMA, model_type="qwen3", num_attention_heads=4, head_dim_=14)),
}


def random_model(family: str = "gpt2"):
    """Non-zero biases and norm weights, so every term of the block math is exercised."""
    config_class, shape = SHAPES[family]
    torch.manual_seed(0)
    model = (GPT if config_class is GPTConfig else Llama)(config_class(**shape)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def c_decoder(model):
    decoder = fast.FastDecoder.for_model(model, fast.library())
    decoder.bind(lambda: model.lm_head.weight.detach().t().contiguous())
    return decoder


@pytest.mark.parametrize("family", SHAPES)
def test_step_equals_pytorch_forward_with_padding_and_reorder(family):
    assert fast.library() is not None
    model = random_model(family)
    assert fast.FastDecoder.supports(model)
    decoder = c_decoder(model)
    B, P, total = 3, 7, 12
    padding = torch.ones(B, total, dtype=torch.bool)
    padding[0, :4], padding[1, :1] = False, False  # left padding of different lengths
    positions = (padding[:, :P].long().cumsum(-1) - 1).clamp(min=0)
    prompt = torch.randint(0, 333, (B, P))
    ours, ref = KVCache(model.config, B, total), KVCache(model.config, B, total)
    steps = steps_against_pytorch(model, decoder, prompt, padding, positions, ours, ref, 4)
    for logits, argmax, expected, length in steps:
        torch.testing.assert_close(logits, expected, atol=2e-5, rtol=1e-5)
        assert torch.equal(argmax, logits.argmax(-1))
        torch.testing.assert_close(ours.k[:, :, :, :length], ref.k[:, :, :, :length], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(ours.v[:, :, :, :length], ref.v[:, :, :, :length], atol=2e-5, rtol=1e-5)
        assert ours.length == ref.length == length


def steps_against_pytorch(model, decoder, prompt, padding, positions, ours, ref, steps: int):
    """The prompt (3 rows) into both caches by the PyTorch forward, then `steps` random tokens
    through the C step (cache `ours`) and the PyTorch forward (`ref`), the rows reordered as beam
    search does after the second; yields (logits, argmax, expected logits, length) of each step."""
    P = prompt.shape[1]
    with torch.inference_mode():
        model(prompt, position_ids=positions, padding_mask=padding[:, :P], cache=ours)
        model(prompt, position_ids=positions, padding_mask=padding[:, :P], cache=ref)
        nxt = positions[:, -1:] + 1
        for step in range(steps):
            if step == 2:  # beam search reorders rows between steps
                index = torch.tensor([2, 0, 0])
                ours.reorder(index, decoder.reorder_rows)  # the C copy of the filled positions, in place
                ref.reorder(index)
                padding, nxt = padding[index], nxt[index]
            tokens = torch.randint(0, 333, (3,))
            length = P + step + 1
            logits, argmax = decoder.step(tokens, ours, nxt, padding[:, :length])
            expected = model(tokens[:, None], position_ids=nxt, padding_mask=padding[:, :length], cache=ref).logits[:, -1]
            yield logits, argmax, expected, length
            nxt = nxt + 1


@pytest.mark.parametrize("family", SHAPES)
def test_prefill_equals_pytorch_forward_with_padding(family):
    """Short prompts go through the C forward too: every token of every row at once, causal
    within its row, pad tokens hidden, logits of the last position only."""
    model = random_model(family)
    decoder = c_decoder(model)
    B, P, total = 3, 6, 10
    padding = torch.ones(B, total, dtype=torch.bool)
    padding[0, :3], padding[2, :1] = False, False
    positions = (padding[:, :P].long().cumsum(-1) - 1).clamp(min=0)
    prompt = torch.randint(0, 333, (B, P))
    ours, ref = KVCache(model.config, B, total), KVCache(model.config, B, total)
    with torch.inference_mode():
        logits, argmax = decoder.prefill(prompt, positions, padding, ours)
        expected = model(prompt, position_ids=positions, padding_mask=padding[:, :P], cache=ref).logits[:, -1]
    torch.testing.assert_close(logits, expected, atol=2e-5, rtol=1e-5)
    assert torch.equal(argmax, expected.argmax(-1)) and ours.length == ref.length == P
    torch.testing.assert_close(ours.k[:, :, :, :P], ref.k[:, :, :, :P], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ours.v[:, :, :, :P], ref.v[:, :, :, :P], atol=2e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A random Qwen2-style folder (grouped-query attention, q/k/v biases, tied head)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(model_type="qwen2", vocab_size=tiny_tokenizer.vocab_size, max_position_embeddings=128,
                      hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=tiny_tokenizer.eos_id,
                      eos_token_id=tiny_tokenizer.eos_id)
    out = tmp_path_factory.mktemp("ckpt") / "qwen2"
    save_checkpoint(out, Llama(cfg), tiny_tokenizer, {"stage": "pretrain"})
    return out


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
@pytest.mark.parametrize("controls", [
    dict(),
    dict(repetition_penalty=1.3, no_repeat_ngram_size=2),
    dict(num_beams=3, num_return_sequences=2, length_penalty=0.8),
    dict(do_sample=True, top_k=20, top_p=0.9, temperature=0.8, seed=3),
], ids=["greedy", "penalties", "beam", "sample"])
def test_engine_tokens_equal_with_and_without_the_c_step(request, family, controls):
    ckpt = load_checkpoint(request.getfixturevalue("tiny_checkpoint" if family == "gpt2" else "llama_checkpoint"))
    with torch.no_grad():
        for p in ckpt.model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    prompts = ["오늘 날씨가", "저는 한국어를 공부하고", "언어"]
    config = GenerationConfig(max_new_tokens=24, eos_token_id=[], **controls)
    with_c = Engine(ckpt.model, ckpt.tokenizer).generate(prompts, config)
    without = Engine(ckpt.model, ckpt.tokenizer, fast_decode=False).generate(prompts, config)
    assert [[c.token_ids for c in group] for group in with_c] == [[c.token_ids for c in group] for group in without]


CHANGES = {  # an MLP weight and a norm or bias of each family, changed in place
    "gpt2": lambda m: (m.transformer.h[0].mlp.c_fc.weight.mul_(-3.0), m.transformer.h[1].ln_1.bias.add_(0.5)),
    "qwen2": lambda m: (m.model.layers[0].mlp.up_proj.weight.mul_(-3.0),
                        m.model.layers[1].self_attn.k_proj.bias.add_(0.5)),
}


@pytest.mark.parametrize("family", CHANGES)
def test_c_step_follows_block_weights_changed_in_place(request, family):
    """PPO trains the model between generations: the pointers are re-read when a tensor changes."""
    ckpt = load_checkpoint(request.getfixturevalue("tiny_checkpoint" if family == "gpt2" else "llama_checkpoint"))
    engine = Engine(ckpt.model, ckpt.tokenizer)
    config = GenerationConfig(max_new_tokens=12, eos_token_id=[])
    engine.generate(["저는"], config)
    with torch.no_grad():
        CHANGES[family](ckpt.model)
    after = engine.generate(["저는"], config)[0][0].token_ids
    assert after == Engine(ckpt.model, ckpt.tokenizer, fast_decode=False).generate(["저는"], config)[0][0].token_ids


def test_without_a_compiler_the_engine_falls_back_to_pytorch(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("HANGPT_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    fast.library.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert fast.library() is None
        assert any("using the PyTorch forward" in str(w.message) for w in caught)
        ckpt = load_checkpoint(tiny_checkpoint)
        engine = Engine(ckpt.model, ckpt.tokenizer)
        out = engine.generate(["저는"], GenerationConfig(max_new_tokens=5, eos_token_id=[]))
        assert len(out[0][0].token_ids) == 5 and engine.fast_decoder() is None
    finally:
        fast.library.cache_clear()


def test_library_is_built_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("HANGPT_CACHE", str(tmp_path))
    fast.library.cache_clear()
    try:
        assert fast.library() is not None
        built = list(tmp_path.glob("decode_step-*.so"))
        assert len(built) == 1 and not list(tmp_path.glob("tmp*"))  # no temp files left
        fast.library.cache_clear()
        stamp = built[0].stat().st_mtime_ns
        assert fast.library() is not None and built[0].stat().st_mtime_ns == stamp
    finally:
        fast.library.cache_clear()


def test_topk_equals_torch_topk():
    torch.manual_seed(0)
    x = torch.randn(3, 5000)
    x[1, :100] = float("-inf")  # banned tokens, as after no-repeat n-grams
    values, indices = fast.topk(x, 8)
    expected = torch.topk(x, 8)
    assert torch.equal(values, expected.values) and torch.equal(indices, expected.indices)
    ties = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert fast.topk(ties, 3)[1].tolist() == [[1, 2, 4]]  # equal values: lower index first


def test_unwritable_cache_folder_falls_back_to_the_temp_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HANGPT_CACHE", str(blocker / "cache"))  # cannot be created
    monkeypatch.setattr(fast.tempfile, "gettempdir", lambda: str(tmp_path))
    fast.library.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "unavailable" warning
            assert fast.library() is not None
        assert list(tmp_path.glob("hangpt-*/decode_step-*.so"))
    finally:
        fast.library.cache_clear()
