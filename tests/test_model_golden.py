"""Golden tests: our GPT against transformers' GPT2LMHeadModel on the same weights."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hangpt.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from hangpt.models import GPT, GPTConfig, KVCache  # noqa: E402


def _hf_tiny(tmp_path, tiny_tokenizer, fmt="safetensors"):
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(vocab_size=tiny_tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2,
                                  n_head=4, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a transposed or swapped tensor shows
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path, safe_serialization=(fmt == "safetensors"))
    tiny_tokenizer.save(tmp_path)
    return hf


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hf_folder_loads_with_same_logits(tmp_path, tiny_tokenizer, fmt):
    hf = _hf_tiny(tmp_path, tiny_tokenizer, fmt)
    ckpt = load_checkpoint(tmp_path)
    ids = torch.randint(0, tiny_tokenizer.vocab_size, (3, 40))
    with torch.no_grad():
        ours = ckpt.model(ids).logits
        ref = hf(ids).logits
    assert (ours - ref).abs().max().item() < 1e-4


def test_our_checkpoint_loads_in_transformers(tmp_path, tiny_tokenizer):
    torch.manual_seed(2)
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4))
    save_checkpoint(tmp_path / "ck", model, tiny_tokenizer, {"stage": "pretrain"})
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "ck")
    text = "오늘 날씨가 정말 좋네요. The stock market"
    assert tok(text)["input_ids"] == tiny_tokenizer.encode(text)
    ids = torch.tensor([tiny_tokenizer.encode(text)])
    with torch.no_grad():
        assert (model.eval()(ids).logits - hf(ids).logits).abs().max().item() < 1e-4


def test_padding_mask_matches_transformers(tmp_path, tiny_tokenizer):
    hf = _hf_tiny(tmp_path, tiny_tokenizer)
    model = load_checkpoint(tmp_path).model
    ids = torch.randint(1, tiny_tokenizer.vocab_size, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :5] = 0  # left padding
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(ids, position_ids=pos, padding_mask=mask).logits
        ref = hf(ids, attention_mask=mask, position_ids=pos).logits
    assert (ours[0, 5:] - ref[0, 5:]).abs().max().item() < 1e-4
    assert (ours[1] - ref[1]).abs().max().item() < 1e-4
    assert torch.isfinite(ours).all()


def test_kv_cache_matches_full_forward(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint).model
    ids = torch.randint(0, model.config.vocab_size, (2, 30))
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache(model.config, 2, 64)
        first = model(ids[:, :20], cache=cache).logits
        steps = [model(ids[:, i : i + 1], cache=cache).logits for i in range(20, 30)]
    got = torch.cat([first] + steps, dim=1)
    assert (got - full).abs().max().item() < 1e-4


def test_hidden_states_and_attentions_match_transformers(tmp_path, tiny_tokenizer):
    hf = _hf_tiny(tmp_path, tiny_tokenizer)
    model = load_checkpoint(tmp_path).model
    ids = torch.randint(0, tiny_tokenizer.vocab_size, (1, 16))
    with torch.no_grad():
        ours = model(ids, output_hidden_states=True, output_attentions=True)
        ref = hf(ids, output_hidden_states=True, output_attentions=True)
    assert len(ours.hidden_states) == len(ref.hidden_states) == 3
    for a, b in zip(ours.hidden_states, ref.hidden_states):
        assert (a - b).abs().max().item() < 1e-4
    for a, b in zip(ours.attentions, ref.attentions):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-5
        assert torch.allclose(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-5)


def test_resize_token_embeddings_keeps_old_rows(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint).model
    old = model.transformer.wte.weight.detach().clone()
    model.resize_token_embeddings(old.shape[0] + 3)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(model.transformer.wte.weight[: old.shape[0]], old)
    assert model(torch.tensor([[old.shape[0] + 2]])).logits.shape[-1] == old.shape[0] + 3
