"""The course's recipe options with PyTorch/transformers names (optimizer, schedule, whole-sequence
SFT loss, --max-length, PPO sampling flags, the RM's preference probability), --device on every
command that runs a model, and the computation-graph picture."""

import json
import math
import shutil
import struct

import click
import pytest
import torch
from click.testing import CliRunner

from hangpt.cli import main
from hangpt.cli.options import train_config, training_options
from hangpt.train.loop import TrainConfig, lr_at, make_optimizer


def _run(args, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _parsed_training_options(args: list[str]) -> dict:
    """The opts dict a training command receives for these flags."""
    seen = {}

    @click.command()
    @training_options
    def cmd(**opts):
        seen.update(opts)

    result = CliRunner().invoke(cmd, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return seen


def test_optimizer_flags_reach_the_torch_optimizer(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opts = _parsed_training_options(["--optimizer", "adam", "--adam-eps", "1e-6", "--adam-betas", "0.9", "0.98",
                                     "--lr-schedule", "linear", "--warmup-steps", "5"])
    cfg = train_config(tmp_path, opts, batch_size=8, lr=1e-4, default_epochs=1)
    optimizer = make_optimizer(model, cfg)
    assert type(optimizer) is torch.optim.Adam
    decay, no_decay = optimizer.param_groups
    assert (decay["eps"], decay["betas"], decay["weight_decay"], no_decay["weight_decay"]) == (1e-6, (0.9, 0.98), 0.0, 0.0)
    assert (cfg.lr_schedule, cfg.warmup_steps) == ("linear", 5)

    cfg = train_config(tmp_path, _parsed_training_options(["--weight-decay", "0.01"]), batch_size=8, lr=1e-4,
                       default_epochs=1)
    optimizer = make_optimizer(model, cfg)
    assert type(optimizer) is torch.optim.AdamW and optimizer.param_groups[0]["weight_decay"] == 0.01
    assert optimizer.param_groups[0]["eps"] == 1e-8 and optimizer.param_groups[0]["betas"] == (0.9, 0.95)


def test_lr_schedules_with_warmup_steps(tmp_path):
    def curve(schedule, warmup_steps=4, total=20):
        cfg = TrainConfig(out=tmp_path, lr=1.0, lr_schedule=schedule, warmup_steps=warmup_steps)
        return [lr_at(step, step / total, cfg, total) for step in range(total)]

    linear = curve("linear")
    assert linear[:4] == [0.25, 0.5, 0.75, 1.0]  # warmup: (step + 1) / warmup_steps
    assert linear[4:] == pytest.approx([1 - (s - 4) / 16 for s in range(4, 20)])  # down to 0, as transformers
    assert curve("constant")[4:] == [1.0] * 16
    cosine = curve("cosine")
    assert cosine[4] == pytest.approx(1.0) and cosine[-1] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 15 / 16)))
    assert curve("constant", warmup_steps=0) == [1.0] * 20


def _qa_csv(path):
    rows = [("배고파", "맛있는 거 챙겨 드세요."), ("비 온대", "우산 꼭 챙기세요."), ("졸려", "잠깐 쉬었다 하세요.")] * 4
    path.write_text("Q,A\n" + "".join(f"{q},{a}\n" for q, a in rows), encoding="utf-8")
    return path


def test_sft_whole_sequence_loss_learns_the_prompt_too(tmp_path, tiny_checkpoint, capsys):
    from hangpt.templates import IGNORE_INDEX
    from hangpt.train.sft import whole_sequence

    assert whole_sequence([([5, 6, 7], [IGNORE_INDEX, 6, 7])]) == [([5, 6, 7], [5, 6, 7])]
    data = _qa_csv(tmp_path / "qa.csv")
    losses = {}
    for loss in ("answer", "all"):
        code, out, err = _run(["sft", "--model", tiny_checkpoint, "--data", data, "--out", tmp_path / loss, "--loss",
                               loss, "--max-steps", "2", "--batch-size", "4", "--val-fraction", "0.25",
                               "--optimizer", "adam", "--lr-schedule", "constant", "--warmup-steps", "0", "--json"],
                              capsys)
        assert code == 0, err
        summary = json.loads(out)
        assert summary["settings"]["loss"] == loss
        losses[loss] = summary["final"]["val_loss"]
    assert losses["answer"] != losses["all"]  # the whole-sequence loss scores the prompt tokens as well


def test_generate_max_length_counts_the_prompt(tmp_path, tiny_checkpoint, tiny_tokenizer, capsys):
    prompt = "오늘 날씨가"
    n_prompt = len(tiny_tokenizer.encode(prompt))
    eos = tiny_tokenizer.vocab_size - 1  # keep the random model from stopping early
    code, out, err = _run(["generate", "--model", tiny_checkpoint, "--prompt", prompt, "--max-length", n_prompt + 5,
                           "--eos-token-id", eos, "--logit-bias", f"{eos}=-100", "--json"], capsys)
    assert code == 0, err
    assert len(json.loads(out)["completions"][0]["token_ids"]) == 5
    with pytest.warns(UserWarning, match=f"--max-new-tokens 2 is used; --max-length {n_prompt + 5} is ignored"):
        code, out, err = _run(["generate", "--model", tiny_checkpoint, "--prompt", prompt, "--max-length",
                               n_prompt + 5, "--max-new-tokens", "2", "--eos-token-id", eos, "--logit-bias",
                               f"{eos}=-100", "--json"], capsys)
    assert code == 0 and len(json.loads(out)["completions"][0]["token_ids"]) == 2
    code, _, err = _run(["generate", "--model", tiny_checkpoint, "--prompt", prompt, "--max-length", n_prompt], capsys)
    assert code == 2 and err.strip() == (f"error: --max-length {n_prompt}: the prompt already has {n_prompt} tokens "
                                         "(max_length counts the prompt; use --max-new-tokens for new tokens only)")


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_device_cpu_and_auto(tmp_path, tiny_checkpoint, capsys, device):
    code, out, err = _run(["generate", "--model", tiny_checkpoint, "--prompt", "오늘", "--max-new-tokens", "3",
                           "--device", device, "--json"], capsys)
    assert code == 0, err and json.loads(out)["completions"]
    code, out, err = _run(["inspect", "--model", tiny_checkpoint, "--text", "오늘 날씨", "--device", device, "--json"],
                          capsys)
    assert code == 0, err
    assert json.loads(out)["hidden_states"][0]["shape"][-1] == 64
    code, out, err = _run(["sft", "--model", tiny_checkpoint, "--data", _qa_csv(tmp_path / "qa.csv"), "--out",
                           tmp_path / "sft", "--max-steps", "1", "--batch-size", "4", "--device", device, "--json"],
                          capsys)
    assert code == 0, err and json.loads(out)["steps"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "오늘"], ["chat"], ["eval", "--data", "{text}"], ["inspect", "--text", "오늘"],
    ["serve"], ["sft", "--data", "{qa}", "--out", "{out}", "--max-steps", "1"],
    ["pretrain", "--data", "{text}", "--out", "{out}", "--max-steps", "1"],
    ["rm", "score", "--prompt", "q", "--response", "a"],
])
def test_device_cuda_without_a_gpu_is_one_clean_line(tmp_path, tiny_checkpoint, capsys, command):
    (tmp_path / "t.txt").write_text("오늘 날씨가 좋네요.\n" * 20, encoding="utf-8")
    paths = {"text": tmp_path / "t.txt", "qa": _qa_csv(tmp_path / "qa.csv"), "out": tmp_path / "out"}
    args = [a.format(**paths) for a in command] + ["--model", str(tiny_checkpoint), "--device", "cuda"]
    code, out, err = _run(args, capsys)
    assert code == 2 and out == ""
    assert err == ("error: --device cuda: no CUDA GPU is available here (PyTorch sees none); "
                   "use --device cpu or auto\n")


def test_rm_score_prints_the_preference_probability(tmp_path, tiny_checkpoint, capsys):
    from hangpt.train.reward import load_reward_model, score_texts

    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": q, "chosen": a, "rejected": "몰라"}, ensure_ascii=False) + "\n"
                             for q, a in [("배고파", "밥 드세요"), ("추워", "옷 입으세요")] * 4), encoding="utf-8")
    code, _, err = _run(["rm", "train", "--model", tiny_checkpoint, "--data", prefs, "--out", tmp_path / "rm",
                         "--max-steps", "2", "--batch-size", "4"], capsys)
    assert code == 0, err
    code, out, _ = _run(["rm", "score", "--model", tmp_path / "rm", "--prompt", "배고파", "--response", "밥 드세요",
                         "--response", "몰라", "--json"], capsys)
    result = json.loads(out)
    r1, r2 = (r["reward"] for r in result["rewards"])
    assert result["p_first_beats_second"] == pytest.approx(1 / (1 + math.exp(r2 - r1)), abs=1e-5)
    code, out, _ = _run(["rm", "score", "--model", tmp_path / "rm", "--prompt", "배고파", "--response", "밥 드세요",
                         "--response", "몰라"], capsys)
    rm, tok, template, _ = load_reward_model(tmp_path / "rm")
    r1, r2 = score_texts(rm, tok, template, ["배고파"] * 2, ["밥 드세요", "몰라"])
    assert out.splitlines()[-1] == f"P(first beats second) = sigmoid({r1:+.4f} - {r2:+.4f}) = {1 / (1 + math.exp(r2 - r1)):.4f}"


def test_ppo_rollouts_take_the_sampling_flags(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    from hangpt.engine import Engine

    seen = []
    original = Engine.generate

    def recording(self, prompts, config):
        seen.append(config)
        return original(self, prompts, config)

    monkeypatch.setattr(Engine, "generate", recording)
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": "배고파", "chosen": "밥", "rejected": "몰라"}, ensure_ascii=False) + "\n",
                     encoding="utf-8")
    code, _, err = _run(["rm", "train", "--model", tiny_checkpoint, "--data", prefs, "--out", tmp_path / "rm",
                         "--max-steps", "1", "--val-fraction", "0"], capsys)
    assert code == 0, err
    (tmp_path / "p.txt").write_text("배고파\n추워\n", encoding="utf-8")
    args = ["ppo", "--model", tiny_checkpoint, "--reward-model", tmp_path / "rm", "--prompts", tmp_path / "p.txt",
            "--out", tmp_path / "ppo", "--max-steps", "1", "--batch-size", "2", "--ppo-epochs", "1"]
    code, out, err = _run(args + ["--max-new-tokens", "3", "--temperature", "0.7", "--top-k", "5", "--top-p", "0.9",
                                  "--repetition-penalty", "1.2", "--no-repeat-ngram-size", "2", "--json"], capsys)
    assert code == 0, err
    config = seen[-1]
    assert (config.do_sample, config.max_new_tokens, config.temperature, config.top_k, config.top_p,
            config.repetition_penalty, config.no_repeat_ngram_size) == (True, 3, 0.7, 5, 0.9, 1.2, 2)
    assert json.loads(out)["settings"]["sampling"] == {"top_k": 5, "top_p": 0.9, "repetition_penalty": 1.2,
                                                       "no_repeat_ngram_size": 2}
    code, _, err = _run(args + ["--top-p", "1.5"], capsys)
    assert code == 2 and err.strip() == "error: --top-p 1.5: must be in (0, 1]"


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_inspect_graph_draws_the_forward_pass(tmp_path, tiny_checkpoint, capsys):
    code, out, err = _run(["inspect", "--model", tiny_checkpoint, "--text", "오늘 날씨", "--graph",
                           tmp_path / "graph.png"], capsys)
    assert code == 0, err
    assert out.splitlines()[-1] == f"computation graph written to {tmp_path / 'graph.png'}"
    data = (tmp_path / "graph.png").read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and height > 2 * width > 400  # a tall graph: two blocks of ops
    code, out, _ = _run(["inspect", "--model", tiny_checkpoint, "--text", "오늘", "--graph", tmp_path / "g.svg",
                         "--json"], capsys)
    svg = (tmp_path / "g.svg").read_text()
    assert code == 0 and json.loads(out)["images"] == [str(tmp_path / "g.svg")]
    assert "transformer.h.1.attn.c_attn.weight" in svg and "AddmmBackward0" in svg  # named weights, autograd ops
    code, _, err = _run(["inspect", "--model", tiny_checkpoint, "--text", "오늘", "--graph", tmp_path / "g.txt"], capsys)
    assert code == 2 and "name a .png, .svg or .pdf file" in err
