"""Golden tests: hangpt's engine against `transformers.generate` and its logits processors, on one
random tiny GPT2LMHeadModel saved to a folder and loaded by both."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hangpt.checkpoint import load_checkpoint  # noqa: E402
from hangpt.engine import Engine, GenerationConfig  # noqa: E402
from hangpt.engine.processors import Processor  # noqa: E402
from hf_models import save_random_model  # noqa: E402

PROMPT = "오늘 날씨가 정말"


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_tokenizer):
    """(transformers model, hangpt Engine) on the same weights. The weights are perturbed well
    beyond the default init, so next-token distributions are peaked and there are no near-ties."""
    folder = tmp_path_factory.mktemp("golden")
    save_random_model(folder, tiny_tokenizer, transformers.GPT2Config, transformers.GPT2LMHeadModel, seed=1,
                      n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    ckpt = load_checkpoint(folder)
    return transformers.GPT2LMHeadModel.from_pretrained(folder).eval(), Engine(ckpt.model, ckpt.tokenizer)


def hf_new_tokens(hf, prompts, eos, **kwargs):
    """transformers' new tokens per returned sequence, cut at the first eos (which is not returned)."""
    L = max(map(len, prompts))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, eos_token_id=eos, pad_token_id=0, **kwargs)
    rows = [o[L:].tolist() for o in out]
    return [r[: r.index(eos)] if eos in r else r for r in rows]


def ours(engine, prompts, **kwargs):
    return [c.token_ids for group in engine.generate(prompts, GenerationConfig(**kwargs)) for c in group]


# token 134 is frequent in this model's greedy output: as eos it makes sequences end at various lengths
@pytest.mark.parametrize("eos", [134, 282])
@pytest.mark.parametrize("controls", [{}, {"repetition_penalty": 1.3}, {"no_repeat_ngram_size": 2}],
                         ids=["greedy", "repetition_penalty", "no_repeat_ngram"])
def test_greedy_matches_transformers(pair, tiny_tokenizer, controls, eos):
    hf, engine = pair
    prompt = tiny_tokenizer.encode(PROMPT)
    ref = hf_new_tokens(hf, [prompt], eos, max_new_tokens=30, do_sample=False, **controls)
    assert ours(engine, [prompt], max_new_tokens=30, eos_token_id=eos, **controls) == ref


@pytest.mark.parametrize("early_stopping", [True, False])
@pytest.mark.parametrize("length_penalty", [0.8, 1.2])
@pytest.mark.parametrize("eos", [134, 256])
def test_beam_search_matches_transformers(pair, tiny_tokenizer, length_penalty, early_stopping, eos):
    hf, engine = pair
    prompt = tiny_tokenizer.encode(PROMPT)
    kwargs = dict(max_new_tokens=30, num_beams=4, num_return_sequences=2, length_penalty=length_penalty,
                  early_stopping=early_stopping)
    ref = hf_new_tokens(hf, [prompt], eos, do_sample=False, **kwargs)
    assert ours(engine, [prompt], eos_token_id=eos, **kwargs) == ref


def test_beam_search_never_and_all_sequences(pair, tiny_tokenizer):
    hf, engine = pair
    prompt = tiny_tokenizer.encode(PROMPT)
    kwargs = dict(max_new_tokens=30, num_beams=4, num_return_sequences=4, early_stopping="never")
    assert ours(engine, [prompt], eos_token_id=134, **kwargs) == hf_new_tokens(hf, [prompt], 134, **kwargs)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_batched_prompts_of_different_lengths(pair, tiny_tokenizer, num_beams):
    hf, engine = pair
    prompts = [tiny_tokenizer.encode(t) for t in (PROMPT, "저는", "인공지능은 다음 단어를 예측하도록")]
    assert len({len(p) for p in prompts}) == 3
    kwargs = dict(max_new_tokens=20, num_beams=num_beams, num_return_sequences=min(2, num_beams))
    ref = hf_new_tokens(hf, prompts, 134, do_sample=False, **kwargs)
    assert ours(engine, prompts, eos_token_id=134, **kwargs) == ref


@pytest.mark.parametrize("settings", [
    dict(temperature=0.7),
    dict(top_k=20),
    dict(top_p=0.8),
    dict(min_p=0.1),
    dict(temperature=1.3, top_k=50, top_p=0.9),
    dict(temperature=0.8, top_k=30, top_p=0.95, min_p=0.05),
])
def test_sampling_filters_match_transformers_processors(settings):
    from transformers.generation import logits_process as lp

    torch.manual_seed(0)
    V = 500
    logits = torch.randn(3, V) * 3
    ref = logits.clone()
    for name, cls in (("temperature", lp.TemperatureLogitsWarper), ("top_k", lp.TopKLogitsWarper),
                      ("top_p", lp.TopPLogitsWarper), ("min_p", lp.MinPLogitsWarper)):
        if name in settings:
            ref = cls(settings[name])(None, ref)
    got = Processor([GenerationConfig(do_sample=True, **settings)] * 3, V).warp(logits)
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    assert torch.allclose(got.softmax(-1), ref.softmax(-1), atol=1e-6)


def test_per_row_settings_in_one_batch_match_row_by_row():
    torch.manual_seed(0)
    logits = torch.randn(3, 300) * 3
    configs = [GenerationConfig(do_sample=True, top_k=10), GenerationConfig(),
               GenerationConfig(do_sample=True, top_p=0.7, temperature=0.5)]
    together = Processor(configs, 300).warp(logits)
    for i, c in enumerate(configs):
        alone = Processor([c], 300).warp(logits[i : i + 1])
        assert torch.equal(together[i : i + 1], alone)


def test_repetition_penalty_matches_transformers_processor():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    torch.manual_seed(0)
    logits = torch.randn(2, 50)
    seqs = torch.randint(0, 50, (2, 12))
    ref = RepetitionPenaltyLogitsProcessor(1.3)(seqs, logits.clone())
    got = Processor([GenerationConfig(repetition_penalty=1.3)] * 2, 50).penalize(logits, seqs, 12)
    assert torch.equal(got, ref)
