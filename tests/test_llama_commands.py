"""Every command that takes --model, on a tiny Llama-family folder saved by transformers; what each
writes is the same family's Hugging Face layout and loads back in transformers."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hangpt.cli import main  # noqa: E402
from test_serve_support import running_server  # noqa: E402

PAIRS = [("배고파", "맛있는 거 챙겨 드세요."), ("비 온대", "우산 꼭 챙기세요."), ("졸려", "잠깐 쉬었다 하세요."),
         ("심심해", "산책 어때요?"), ("추워", "따뜻하게 입고 나가세요."), ("피곤해", "오늘은 일찍 주무세요.")]


def run(capsys, *args):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    return out.out


@pytest.fixture(scope="module")
def llama(tmp_path_factory, tiny_tokenizer):
    """A random Qwen2-style model (GQA, q/k/v biases, untied head) with our tokenizer."""
    folder = tmp_path_factory.mktemp("llama") / "base"
    torch.manual_seed(0)
    eos = tiny_tokenizer.eos_id
    config = transformers.Qwen2Config(vocab_size=tiny_tokenizer.vocab_size, hidden_size=64, intermediate_size=96,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, tie_word_embeddings=False,
                                      bos_token_id=eos, eos_token_id=eos)
    transformers.Qwen2ForCausalLM(config).save_pretrained(folder)
    tiny_tokenizer.save(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    rows = "".join(f"{q},{a},0\n" for q, a in PAIRS * 4)
    (tmp / "qa.csv").write_text("Q,A,label\n" + rows, encoding="utf-8")
    (tmp / "text.txt").write_text("\n".join(f"{q} {a}" for q, a in PAIRS * 20) + "\n", encoding="utf-8")
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": q}, ensure_ascii=False) + "\n" for q, _ in PAIRS),
                                       encoding="utf-8")
    lines = ["id\tdocument\tlabel"] + [f"{i}\t영화 정말 {'좋아요' if i % 2 else '싫어요'}\t{i % 2}" for i in range(40)]
    (tmp / "cls.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp


def assert_loads_in_transformers(folder, model_type="qwen2"):
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == model_type
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == model_type


def assert_same_logits_and_special_tokens(folder, base):
    """transformers reads the folder hangpt wrote as hangpt does (same logits), and its tokenizer
    keeps the base's special tokens (plus the chat role tokens SFT added)."""
    from hangpt.checkpoint import load_checkpoint

    ours = load_checkpoint(folder).model
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[5, 9, 13, 21, 30, 2]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-4, rtol=1e-4)
    tok, base_tok = (transformers.AutoTokenizer.from_pretrained(f) for f in (folder, base))
    for name in ("bos_token", "eos_token", "unk_token"):
        assert getattr(tok, name) == getattr(base_tok, name), name
    assert tok.eos_token_id == base_tok.eos_token_id


def test_chat(llama, data, capsys, monkeypatch, tmp_path):
    import io

    run(capsys, "sft", "--model", llama, "--data", data / "qa.csv", "--out", tmp_path / "sft", "--max-steps", 2,
        "--batch-size", 4, "--val-fraction", 0)
    monkeypatch.setattr("sys.stdin", io.StringIO("배고파\n/quit\n"))
    out = run(capsys, "chat", "--model", tmp_path / "sft", "--greedy", "--max-new-tokens", 4)
    assert len(out.splitlines()) == 1  # one answer, then /quit


def test_generate_eval_inspect(llama, data, capsys, tmp_path):
    out = json.loads(run(capsys, "generate", "--model", llama, "--prompt", "배고파", "--max-new-tokens", 5, "--json"))
    assert len(out["completions"][0]["token_ids"]) <= 5
    result = json.loads(run(capsys, "eval", "--model", llama, "--data", data / "text.txt", "--json"))
    assert result["bits_per_byte"] > 0 and result["tokens"] > 0
    shown = json.loads(run(capsys, "inspect", "--model", llama, "--text", "오늘 날씨가", "--out", tmp_path / "png",
                           "--layer", 1, "--json"))
    by_name = {r["module"]: r["parameters"] for r in shown["parameters"]}
    assert by_name["model.layers.1.self_attn"] == (64 * 64 + 64) + 2 * (64 * 32 + 32) + 64 * 64
    assert by_name["lm_head"] == 64 * 400 or by_name["lm_head"] > 0  # untied: its own parameters
    assert (tmp_path / "png" / "attention_layer1.png").exists()


def test_bf16_weights_generate_like_float32(llama, tmp_path, capsys):
    """--dtype bfloat16 computes in bf16 (a bf16 copy of the folder: loaded as is, no conversion)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(llama).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    (tmp_path / "bf16" / "tokenizer.json").write_bytes((llama / "tokenizer.json").read_bytes())
    (tmp_path / "bf16" / "tokenizer_config.json").write_bytes((llama / "tokenizer_config.json").read_bytes())
    ours = json.loads(run(capsys, "generate", "--model", tmp_path / "bf16", "--dtype", "bfloat16", "--prompt", "배고파",
                          "--max-new-tokens", 6, "--json"))["completions"][0]["token_ids"]
    ids = torch.tensor([run_ids(llama, "배고파")])
    ref = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=-1, pad_token_id=0)[0, ids.shape[1]:]
    assert ours == ref.tolist()[: len(ours)]


def run_ids(folder, text):
    from hangpt.tokenizer import Tokenizer

    return Tokenizer.load(folder).encode(text)


def test_training_stages_write_the_same_family(llama, data, capsys, tmp_path):
    run(capsys, "sft", "--model", llama, "--data", data / "qa.csv", "--out", tmp_path / "sft", "--max-steps", 3,
        "--batch-size", 4, "--val-fraction", 0)
    assert_loads_in_transformers(tmp_path / "sft")
    assert_same_logits_and_special_tokens(tmp_path / "sft", llama)
    chat = json.loads(run(capsys, "generate", "--model", tmp_path / "sft", "--prompt", "추워", "--chat",
                          "--max-new-tokens", 4, "--json"))
    assert "completions" in chat

    run(capsys, "rm", "make-pairs", "--data", data / "qa.csv", "--out", tmp_path / "prefs.jsonl", "--seed", 1)
    run(capsys, "rm", "train", "--model", tmp_path / "sft", "--data", tmp_path / "prefs.jsonl", "--out",
        tmp_path / "rm", "--max-steps", 2, "--batch-size", 4, "--val-fraction", 0)
    scored = json.loads(run(capsys, "rm", "score", "--model", tmp_path / "rm", "--prompt", "배고파",
                            "--response", "밥 드세요", "--json"))
    assert isinstance(scored["rewards"][0]["reward"], float)
    run(capsys, "dpo", "--model", tmp_path / "sft", "--data", tmp_path / "prefs.jsonl", "--out", tmp_path / "dpo",
        "--max-steps", 2, "--batch-size", 4, "--val-fraction", 0)
    assert_loads_in_transformers(tmp_path / "dpo")
    run(capsys, "ppo", "--model", tmp_path / "sft", "--reward-model", tmp_path / "rm", "--prompts",
        data / "prompts.jsonl", "--out", tmp_path / "ppo", "--max-steps", 1, "--batch-size", 2,
        "--max-new-tokens", 4, "--ppo-epochs", 1)
    assert_loads_in_transformers(tmp_path / "ppo")

    run(capsys, "classify", "train", "--model", llama, "--data", data / "cls.tsv", "--out", tmp_path / "cls",
        "--max-steps", 2, "--batch-size", 8, "--val-fraction", 0)
    evaluated = json.loads(run(capsys, "classify", "eval", "--model", tmp_path / "cls", "--data", data / "cls.tsv",
                               "--json"))
    assert 0 <= evaluated["accuracy"] <= 1
    seq = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls")
    assert seq.config.num_labels == 2


def test_pretrain_llama_and_continue(data, capsys, tmp_path, monkeypatch):
    from hangpt.models import llama as llama_module

    monkeypatch.setitem(llama_module.PRESETS, "test", dict(
        vocab_size=300, max_position_embeddings=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    summary = json.loads(run(capsys, "pretrain", "--arch", "llama", "--preset", "test", "--data", data / "text.txt",
                             "--out", tmp_path / "pt", "--max-steps", 3, "--batch-size", 4, "--val-fraction", 0.1,
                             "--no-progress", "--json").strip().splitlines()[-1])
    assert summary["steps"] == 3
    assert_loads_in_transformers(tmp_path / "pt", "llama")
    run(capsys, "pretrain", "--model", tmp_path / "pt", "--data", data / "text.txt", "--out", tmp_path / "pt2",
        "--max-steps", 2, "--batch-size", 4, "--val-fraction", 0.1, "--no-progress")
    assert_loads_in_transformers(tmp_path / "pt2", "llama")


def test_serve_chat_completion(llama):
    import openai

    with running_server(llama, max_tokens_limit=16) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        name = client.models.list().data[0].id
        r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "배고파"}],
                                           max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 4
