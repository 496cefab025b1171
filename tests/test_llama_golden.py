"""Golden tests for the Llama family (llama, mistral, qwen2, qwen3): random tiny models made and
saved by transformers, loaded by hangpt; logits and generated tokens must equal transformers'."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hangpt.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from hangpt.engine import Engine  # noqa: E402
from hf_models import save_random_model  # noqa: E402
from test_engine_golden import hf_new_tokens, ours  # noqa: E402

SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 32}

VARIANTS = {
    "llama-untied-gqa": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False)),
    "llama-tied-llama3-rope": ("LlamaConfig", "LlamaForCausalLM",
                               dict(tie_word_embeddings=True, rope_theta=500000.0, rope_scaling=LLAMA3_SCALING)),
    "llama-linear-rope-mqa": ("LlamaConfig", "LlamaForCausalLM",
                              dict(num_key_value_heads=1, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(head_dim=16, sliding_window=None)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=24, tie_word_embeddings=False)),
}


def make_folder(folder, tokenizer, variant, perturb=0.3, seed=0):
    """A random transformers model of `variant` saved with `tokenizer`; returns the HF model."""
    config_cls, model_cls, extra = VARIANTS[variant]
    return save_random_model(folder, tokenizer, getattr(transformers, config_cls), getattr(transformers, model_cls),
                             perturb, seed, **{**SHAPE, **extra})


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp(request.param)
    hf = make_folder(folder, tiny_tokenizer, request.param)
    return hf, load_checkpoint(folder), folder


def test_logits_equal_transformers(pair):
    hf, ckpt, _ = pair
    ids = torch.randint(3, ckpt.model.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(ids).logits
        ours = ckpt.model(ids).logits
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_padded_batch_with_cache_equals_transformers(pair):
    """Left padding and the KV cache: the last position's logits of each row, then one step."""
    hf, ckpt, _ = pair
    prompts = [[5, 9, 13, 21, 7, 30], [11, 4, 8]]
    engine = Engine(ckpt.model, ckpt.tokenizer)
    batch, logits = engine.prefill(prompts, 8)
    L = max(map(len, prompts))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits[:, -1]
        torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
        nxt = torch.tensor([17, 19])
        step = engine.step(batch, nxt)
        ref_step = hf(torch.cat([ids, nxt[:, None]], 1), attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)).logits[:, -1]
    torch.testing.assert_close(step, ref_step, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("controls", [
    dict(max_new_tokens=24),
    dict(max_new_tokens=24, repetition_penalty=1.3),
    dict(max_new_tokens=24, no_repeat_ngram_size=2),
    dict(max_new_tokens=16, num_beams=3, num_return_sequences=2, length_penalty=1.0),
], ids=["greedy", "repetition_penalty", "no_repeat_ngram", "beam3"])
def test_generate_equals_transformers(pair, tiny_tokenizer, controls):
    hf, ckpt, _ = pair
    engine = Engine(ckpt.model, ckpt.tokenizer)
    prompts = [tiny_tokenizer.encode("오늘 날씨가 정말"), tiny_tokenizer.encode("저는")]
    eos = 7
    for p in prompts:  # transformers' beam search over a padded batch differs in tie handling: one at a time
        ref = hf_new_tokens(hf, [p], eos, do_sample=False, **controls)
        assert ours(engine, [p], eos_token_id=eos, **controls) == ref


def test_round_trip_through_save_loads_in_transformers(pair, tmp_path):
    """A folder hangpt writes for the family loads in transformers with the same logits."""
    hf, ckpt, folder = pair
    out = tmp_path / "saved"
    save_checkpoint(out, ckpt.model, ckpt.tokenizer, {"stage": "sft"})
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == hf.config.model_type
    again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)


def test_bf16_checkpoint_loads_in_its_dtype(tmp_path, tiny_tokenizer):
    """dtype=bfloat16 on a bf16 folder keeps bf16 (logits as transformers' bf16 model, up to bf16
    rounding); dtype=float32 converts."""
    hf = make_folder(tmp_path, tiny_tokenizer, "qwen2")
    hf.to(torch.bfloat16).save_pretrained(tmp_path)
    ckpt = load_checkpoint(tmp_path, dtype="bfloat16")
    assert ckpt.model.lm_head.weight.dtype == torch.bfloat16
    ids = torch.tensor([[5, 9, 13, 21]])
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(ids).logits.float(), hf(ids).logits.float(), atol=0.1, rtol=0.05)
    fp32 = load_checkpoint(tmp_path, dtype="float32")
    assert fp32.model.lm_head.weight.dtype == torch.float32


def test_sharded_folder_loads(tmp_path, tiny_tokenizer):
    hf = make_folder(tmp_path / "src", tiny_tokenizer, "llama-untied-gqa")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    tiny_tokenizer.save(tmp_path / "sharded")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ckpt = load_checkpoint(tmp_path / "sharded")
    ids = torch.tensor([[5, 9, 13, 21]])
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_unsupported_model_type_names_the_supported_ones(tmp_path, tiny_tokenizer):
    from hangpt.errors import InputError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bloom"}))
    with pytest.raises(InputError, match="model_type 'bloom' is not supported.*llama.*qwen3"):
        load_checkpoint(tmp_path)
