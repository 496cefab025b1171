"""The fused C decoding step on bfloat16 models against hangpt's PyTorch bf16 forward.

The C step reads the bf16 weights and KV cache as they are and rounds its float32 activations to
bf16 wherever torch rounds them, so both compute with the same numbers; only the order in which a
dot product's float32 terms are added differs (torch's kernels block the sums their own way). A
sum that lands on a rounding boundary can then round to the neighbouring bf16 value (2^-8
relative), and that flip travels through the later layers. Measured on these random models: the
Llama family's logits equal torch's bit for bit, GPT-2's within 0.8% of the largest logit. Hence
the tolerance: 2% of the largest |logit| (3% for a prefill, where torch's fused SDPA kernel rounds
the attention differently from the step-by-step attention), and greedy tokens equal over 24 steps
through the engine. Both C paths are checked: AVX512-BF16 dot products (where the compiled library
has them) and the portable one (weights widened to float32), forced with native_bf16=False.
"""

import pytest
import torch

from hangpt.checkpoint import load_checkpoint
from hangpt.engine import Engine, GenerationConfig, fast
from hangpt.models import KVCache
from test_fast_decode import SHAPES, llama_checkpoint, pytestmark, random_model, steps_against_pytorch  # noqa: F401

KERNELS = ["native", "portable"]


def skip_without_native(kernel: str) -> None:
    if kernel == "native" and not fast.library().hangpt_native_bf16():
        pytest.skip("the compiled library has no AVX512-BF16 (compiler or CPU): the portable path runs")


def bf16_decoder(model, kernel: str):
    skip_without_native(kernel)
    decoder = fast.FastDecoder.for_model(model, fast.library())
    decoder.native_bf16 = kernel == "native"
    decoder.bind(lambda: pytest.fail("a bf16 model's head is read as nn.Linear keeps it, not copied"))
    return decoder


def assert_logits_close(ours: torch.Tensor, expected: torch.Tensor, share: float = 0.02) -> None:
    assert ours.dtype == torch.float32
    assert torch.equal(ours, ours.bfloat16().float())  # bf16 values, as torch's bf16 head gives
    torch.testing.assert_close(ours, expected.float(), rtol=0, atol=share * expected.float().abs().max().item())


def assert_cache_close(ours: KVCache, ref: KVCache, length: int) -> None:
    for a, b in ((ours.k, ref.k), (ours.v, ref.v)):
        a, b = a[:, :, :, :length].float(), b[:, :, :, :length].float()
        torch.testing.assert_close(a, b, rtol=0, atol=0.02 * b.abs().max().item())


def padded_batch(model, P: int, total: int, pads: tuple[int, int, int], seed: int):
    """Three left-padded prompts of P tokens (pads[r] pad tokens in row r), their padding mask over
    `total` positions, their position ids, and two empty bf16 caches (the C step's, the reference's)."""
    padding = torch.ones(3, total, dtype=torch.bool)
    for r, pad in enumerate(pads):
        padding[r, :pad] = False
    positions = (padding[:, :P].long().cumsum(-1) - 1).clamp(min=0)
    prompt = torch.randint(0, 333, (3, P), generator=torch.Generator().manual_seed(seed))
    return prompt, padding, positions, [KVCache(model.config, 3, total, dtype=torch.bfloat16) for _ in range(2)]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("family", SHAPES)
def test_bf16_step_equals_pytorch_forward_with_padding_and_reorder(family, kernel):
    model = random_model(family).to(torch.bfloat16)
    assert fast.FastDecoder.supports(model)
    decoder = bf16_decoder(model, kernel)
    # no float32 copy: the matrices C reads are the model's own bf16 tensors
    matrices = {p.data_ptr() for p in model.parameters() if p.dim() == 2}
    bound = [t for t in decoder._weights if t is not None and t.dim() == 2]
    assert bound and all(t.dtype == torch.bfloat16 and t.data_ptr() in matrices for t in bound)
    prompt, padding, positions, (ours, ref) = padded_batch(model, 7, 20, (4, 1, 0), seed=1)
    steps = steps_against_pytorch(model, decoder, prompt, padding, positions, ours, ref, 10)
    for logits, argmax, expected, length in steps:
        assert_logits_close(logits, expected)
        assert torch.equal(argmax, logits.argmax(-1))
        assert_cache_close(ours, ref, length)
        assert ours.k.dtype == torch.bfloat16 and ours.length == ref.length == length


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("family", SHAPES)
def test_bf16_prefill_equals_pytorch_forward(family, kernel):
    model = random_model(family).to(torch.bfloat16)
    decoder = bf16_decoder(model, kernel)
    P = 6
    prompt, padding, positions, (ours, ref) = padded_batch(model, P, 10, (3, 0, 1), seed=2)
    with torch.inference_mode():
        logits, argmax = decoder.prefill(prompt, positions, padding, ours)
        expected = model(prompt, position_ids=positions, padding_mask=padding[:, :P], cache=ref).logits[:, -1]
    assert_logits_close(logits, expected, 0.03)
    assert torch.equal(argmax, logits.argmax(-1)) and ours.length == ref.length == P
    assert_cache_close(ours, ref, P)


@pytest.mark.parametrize("family", SHAPES)
def test_native_and_portable_paths_agree(family):
    """The same bf16 products summed in another order: bf16-rounded logits within rounding flips."""
    model = random_model(family).to(torch.bfloat16)
    results = []
    for kernel in KERNELS:
        decoder = bf16_decoder(model, kernel)
        cache = KVCache(model.config, 2, 12, dtype=torch.bfloat16)
        prompt = torch.randint(0, 333, (2, 5), generator=torch.Generator().manual_seed(3))
        decoder.prefill(prompt, None, None, cache)
        results.append(decoder.step(torch.tensor([7, 11]), cache, None, None))
    assert_logits_close(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
@pytest.mark.parametrize("controls", [dict(), dict(num_beams=3, num_return_sequences=2)], ids=["greedy", "beam"])
def test_bf16_engine_tokens_equal_with_and_without_the_c_step(request, family, kernel, controls, monkeypatch):
    ckpt = load_checkpoint(request.getfixturevalue("tiny_checkpoint" if family == "gpt2" else "llama_checkpoint"),
                           dtype="bfloat16")
    with torch.no_grad():
        for p in ckpt.model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())).to(p.dtype) * 0.3)
    skip_without_native(kernel)
    with_c = Engine(ckpt.model, ckpt.tokenizer)
    with_c.fast_decoder().native_bf16 = kernel == "native"  # kept: the engine binds the same decoder again
    prompts = ["오늘 날씨가", "저는 한국어를 공부하고", "언어"]
    config = GenerationConfig(max_new_tokens=24, eos_token_id=[], **controls)
    ours = with_c.generate(prompts, config)
    without = Engine(ckpt.model, ckpt.tokenizer, fast_decode=False).generate(prompts, config)
    assert [[c.token_ids for c in group] for group in ours] == [[c.token_ids for c in group] for group in without]
