"""Golden tests for GPT-J (KoGPT's architecture) and GPT-NeoX (polyglot-ko's): random tiny models
made and saved by transformers, loaded by hangpt; logits and generated tokens must equal
transformers', what hangpt writes must load in transformers, and the CLI trains and generates on both."""

import json
import os
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hangpt.checkpoint import load_checkpoint, read_safetensors, save_checkpoint  # noqa: E402
from hangpt.engine import Engine, GenerationConfig  # noqa: E402
from hf_models import save_random_model  # noqa: E402
from test_llama_commands import assert_same_logits_and_special_tokens, run  # noqa: E402
from test_llama_golden import hf_new_tokens, ours  # noqa: E402

NEOX = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
VARIANTS = {
    # head_dim 16, rotary on the first 8 dims of each head (KoGPT: 64 of 256)
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=128,
                                                   bos_token_id=1, eos_token_id=2)),
    "neox-parallel-quarter-rotary": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                                     dict(NEOX, use_parallel_residual=True, rotary_pct=0.25)),
    "neox-sequential-full-rotary": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                                    dict(NEOX, use_parallel_residual=False, rotary_pct=1.0)),
    # transformers 5's rope_parameters, linear scaling, no attention biases, tanh GELU
    "neox-linear-rope-no-bias": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        NEOX, attention_bias=False, hidden_act="gelu_new",
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0, "partial_rotary_factor": 0.5})),
}


def make_folder(folder, tokenizer, variant, perturb=0.3, seed=0):
    """A random transformers model of `variant` saved with `tokenizer`; returns the HF model."""
    config_cls, model_cls, extra = VARIANTS[variant]
    return save_random_model(folder, tokenizer, getattr(transformers, config_cls), getattr(transformers, model_cls),
                             perturb, seed, **extra)


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp(request.param)
    hf = make_folder(folder, tiny_tokenizer, request.param)
    return hf, load_checkpoint(folder), folder


def test_logits_equal_transformers(pair):
    hf, ckpt, _ = pair
    ids = torch.randint(3, ckpt.model.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_padded_batch_with_cache_equals_transformers(pair):
    """Left padding and the KV cache: the last position's logits of each row, then one step."""
    hf, ckpt, _ = pair
    prompts = [[5, 9, 13, 21, 7, 30], [11, 4, 8]]
    engine = Engine(ckpt.model, ckpt.tokenizer)
    batch, logits = engine.prefill(prompts, 8)
    L = max(map(len, prompts))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    nxt = torch.tensor([17, 19])
    with torch.no_grad():
        torch.testing.assert_close(logits, hf(ids, attention_mask=mask).logits[:, -1], atol=1e-4, rtol=1e-4)
        step = engine.step(batch, nxt)
        ref = hf(torch.cat([ids, nxt[:, None]], 1), attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1))
    torch.testing.assert_close(step, ref.logits[:, -1], atol=1e-4, rtol=1e-4)


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
        assert ours(engine, [p], eos_token_id=eos, **controls) == hf_new_tokens(hf, [p], eos, do_sample=False, **controls)


def test_round_trip_through_save_loads_in_transformers(pair, tmp_path):
    """hangpt writes the tensors under transformers' file names (GPT-NeoX's head as embed_out, once)
    and a config.json transformers reads the same: equal logits."""
    hf, ckpt, folder = pair
    out = tmp_path / "saved"
    save_checkpoint(out, ckpt.model, ckpt.tokenizer, {"stage": "sft"})
    assert read_safetensors(out / "model.safetensors").keys() == read_safetensors(folder / "model.safetensors").keys()
    again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert again.config.model_type == hf.config.model_type
    ids = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)
    reloaded = load_checkpoint(out).model
    assert reloaded.config == ckpt.model.config


def test_neox_head_is_one_module_under_two_names(tmp_path, tiny_tokenizer):
    """embed_out is the lm_head the engine and trainers use: growing the vocabulary replaces it (no
    second head in the state dict), and all-linear LoRA leaves it alone as PEFT does."""
    from hangpt.models.lora import target_names

    make_folder(tmp_path, tiny_tokenizer, "neox-parallel-quarter-rotary")
    model = load_checkpoint(tmp_path).model
    assert model.lm_head is model.embed_out
    model.resize_token_embeddings(410)
    assert model.lm_head is model.embed_out and model.embed_out.weight.shape == (410, 64)
    assert not [k for k in model.state_dict() if k.startswith("lm_head")]
    assert "embed_out" not in target_names(model, "all-linear")


def test_bf16_gptj_loads_in_its_dtype(tmp_path, tiny_tokenizer):
    hf = make_folder(tmp_path, tiny_tokenizer, "gptj")
    hf.to(torch.bfloat16).save_pretrained(tmp_path)
    ckpt = load_checkpoint(tmp_path, dtype="bfloat16")
    assert ckpt.model.lm_head.weight.dtype == torch.bfloat16
    ids = torch.tensor([[5, 9, 13, 21]])
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(ids).logits.float(), hf(ids).logits.float(), atol=0.1, rtol=0.05)


def test_bad_rotary_settings_are_one_line(tmp_path):
    from hangpt.errors import InputError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gptj", "n_embd": 64, "n_head": 4,
                                                      "rotary_dim": 32}))
    with pytest.raises(InputError, match="rotary_dim 32 must be even and at most the head size 16"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "rope_scaling": {"type": "yarn"}}))
    with pytest.raises(InputError, match="rope_scaling .* not supported"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("variant", ["gptj", "neox-sequential-full-rotary"])
def test_sft_and_generate_commands(variant, tiny_tokenizer, tmp_path, capsys):
    """sft on each family (role tokens added: the vocabulary grows) writes the family's layout, which
    transformers reads with the same logits; generate answers from it."""
    base = tmp_path / "base"
    make_folder(base, tiny_tokenizer, variant)
    pairs = [("배고파", "맛있는 거 챙겨 드세요."), ("비 온대", "우산 꼭 챙기세요."), ("졸려", "잠깐 쉬었다 하세요.")]
    (tmp_path / "qa.csv").write_text("Q,A\n" + "".join(f"{q},{a}\n" for q, a in pairs * 4), encoding="utf-8")
    run(capsys, "sft", "--model", base, "--data", tmp_path / "qa.csv", "--out", tmp_path / "sft", "--max-steps", 2,
        "--batch-size", 4, "--val-fraction", 0)
    expected = "gptj" if variant == "gptj" else "gpt_neox"
    assert json.loads((tmp_path / "sft" / "config.json").read_text())["model_type"] == expected
    assert_same_logits_and_special_tokens(tmp_path / "sft", base)
    out = json.loads(run(capsys, "generate", "--model", tmp_path / "sft", "--prompt", "배고파", "--chat",
                         "--max-new-tokens", 5, "--json"))
    assert len(out["completions"][0]["token_ids"]) <= 5


@pytest.mark.parametrize("variant", ["gptj", "neox-parallel-quarter-rotary"])
@pytest.mark.parametrize("targets", [None, "all-linear"])
def test_lora_adapter_matches_peft(variant, targets, tmp_path, tiny_tokenizer):
    """LoRA on both families (PEFT's default targets, or every linear layer but the head): PEFT loads
    hangpt's adapter with the same logits and counts the same trainable parameters."""
    peft = pytest.importorskip("peft")
    from hangpt.models.lora import add_lora

    base = tmp_path / "base"
    make_folder(base, tiny_tokenizer, variant)
    ckpt = load_checkpoint(base, dtype="float32")
    params = add_lora(ckpt.model, r=4, alpha=8, targets=targets)
    with torch.no_grad():  # B starts at zero: make the adapter do something
        for p in params:
            p.normal_(0, 0.1)
    save_checkpoint(tmp_path / "adapter", ckpt.model, ckpt.tokenizer, {"stage": "sft", "base_model": {"path": str(base)}})
    hf = lambda: transformers.AutoModelForCausalLM.from_pretrained(base)  # noqa: E731
    theirs = peft.PeftModel.from_pretrained(hf(), tmp_path / "adapter").eval()
    ids = torch.randint(0, tiny_tokenizer.vocab_size, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model.eval()(ids).logits, theirs(ids).logits, atol=1e-4, rtol=1e-4)
    fresh = peft.get_peft_model(hf(), peft.LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))
    assert sum(p.numel() for p in params) == fresh.get_nb_trainable_parameters()[0]


def test_decoding_tutorial_on_a_gptj_folder(tmp_path, tiny_tokenizer):
    """docs/03-decoding.md with MODEL= a GPT-J folder (the course's KoGPT experiment): beam search
    gives one text, top-p sampling others (different per seed); temperature 0.01 samples (nearly) the
    greedy text and 1.5 does not; no-repeat-ngram 2 leaves no repeated token pair."""
    from test_tutorials import DOCS, SMALL, run_tutorial

    save_random_model(tmp_path / "kogpt", tiny_tokenizer, transformers.GPTJConfig, transformers.GPTJForCausalLM,
                      perturb=0.1, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=256, bos_token_id=1,
                      eos_token_id=2)
    out = run_tutorial(DOCS / "03-decoding.md", tmp_path, {**SMALL, "MODEL": str(tmp_path / "kogpt")})
    section = out[out.index("== 빔 서치\n"):]
    shown = dict(re.findall(r"^== ([^\n]+)\n(.*?)(?=^== |\Z)", section, re.S | re.M))
    beam, top_p1, top_p2 = shown["빔 서치"], shown["top-p 샘플링 seed 1"], shown["top-p 샘플링 seed 2"]
    assert beam not in (top_p1, top_p2) and top_p1 != top_p2
    near, far = (len(os.path.commonprefix([shown["탐욕적"], shown[k]])) for k in ("temperature 0.01", "temperature 1.5"))
    assert near >= 20 and far < near, "a temperature near 0 samples (nearly) the greedy text, 1.5 does not"
    greedy, blocked = (json.loads(shown[k])["completions"][0]["token_ids"]
                       for k in ("탐욕적 token_ids", "no-repeat-ngram 2 token_ids"))
    pairs = list(zip(blocked, blocked[1:]))
    assert len(pairs) == len(set(pairs)) and blocked != greedy
