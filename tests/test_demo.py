"""The demo end to end on the embedded data with a tiny budget: every stage writes its checkpoint
and its figure, and the report ties them together."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from hangpt.checkpoint import load_checkpoint, save_checkpoint
from hangpt.cli import cli, main
from hangpt.demo import RECIPE, Demo, embedded_data


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """The demo with a budget far below its recipe: every stage runs a few steps."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    runner = CliRunner()
    result = runner.invoke(cli, ["demo", "--minutes", "0.1", "--no-serve", "--eval-prompts", "6", "--out", str(out),
                                  "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_demo_runs_every_stage(tiny_demo):
    out, summary, log = tiny_demo
    figures = summary["figures"]
    for stage in ("pretrain", "sft", "rm", "dpo", "ppo"):
        ckpt = load_checkpoint(out / stage)
        assert ckpt.meta["stage"] == stage
        assert not (out / stage / "train_state.pt").exists()  # finished runs keep no optimizer state
    for key in ("tokenizer_bytes_per_token", "pretrain_val_bpb", "sft_val_answer_loss", "rm_val_accuracy",
                "dpo_val_accuracy", "ppo_train_reward", "sft_heldout_reward", "dpo_heldout_kl", "ppo_heldout_kl",
                "sft_distinct_answers", "ppo_on_topic", "ppo_replacement_chars", "expected_minutes"):
        assert isinstance(figures[key], (int, float)), key
    assert 0 <= figures["rm_val_accuracy"] <= 1
    assert figures["preference_pairs"] > 400
    # DPO trains on the SFT model's own answers ranked by the reward model, as many as its steps use;
    # an SFT model trained a few steps may end none of them, and the synthetic pairs stand in
    ranked = (out / "ranked_pairs.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(ranked) == figures["ranked_pairs"] <= figures["dpo_steps"] * 16 / 0.9 + 1
    assert ranked or "DPO trains on the synthetic pairs" in log
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "validation bits per byte" in report and "ppo/reward_curve.png" in report
    assert (out / "pretrain" / "loss_curve.png").stat().st_size > 1000
    # the plan is printed up front with an expected time, and each stage with its steps and ETA
    assert "expected about" in log and "steps, about" in log and "done by ~" in log


def test_short_budget_is_reported_with_the_command_that_fixes_it(tiny_demo):
    out, summary, log = tiny_demo
    figures = summary["figures"]
    assert figures["pretrain_steps"] < RECIPE["pretrain"]["steps"]  # scaled down to fit 0.1 minutes
    report = (out / "report.md").read_text(encoding="utf-8")
    for text in (log, report):
        assert "less training than the demo's quality needs" in text and "pretrain " in text
        assert f"hangpt demo --out {out}" in text  # the same run without --minutes


def test_report_flags_a_degenerate_model(tiny_demo, tmp_path):
    """A chatbot built to give the same answer to every prompt is called degenerate, not presented."""
    out, _, _ = tiny_demo
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    ckpt = load_checkpoint(out / "sft")
    torch.manual_seed(0)
    norm = ckpt.model.final_norm
    norm.weight.data.zero_()  # the last hidden state no longer depends on the input
    if getattr(norm, "bias", None) is not None:  # LayerNorm's: a constant state; RMSNorm's is then 0
        norm.bias.data.normal_()
    for name in ("sft", "dpo", "ppo"):
        shutil.rmtree(bad / name)
        save_checkpoint(bad / name, ckpt.model, ckpt.tokenizer, {**ckpt.meta, "stage": name})
    demo = Demo(bad, embedded_data(), eval_prompts=6)
    demo.compare()
    demo.write_report()
    figures = demo.result.figures
    assert figures["ppo_distinct_answers"] == 1 and figures["heldout_prompts"] == 6
    report = (bad / "report.md").read_text(encoding="utf-8")
    warning = report.split("## Warning")[1].split("Wall time")[0]
    assert "the ppo chatbot's answers are degenerate: only 1 distinct answers to 6 prompts" in warning
    assert "more training fixes this: hangpt demo" in warning


def test_demo_export_data(tmp_path):
    try:
        main(["demo", "--export-data", str(tmp_path / "data")])
    except SystemExit as e:
        assert e.code == 0
    names = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert names == ["README.md", "chatbot_qa.csv", "korean_text.txt", "prompts.txt"]


def test_demo_data_dir_without_qa_is_one_line_error(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("안녕하세요\n", encoding="utf-8")
    try:
        main(["demo", "--data-dir", str(tmp_path), "--no-serve", "--out", str(tmp_path / "o")])
    except SystemExit as e:
        assert e.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Q and A" in err and len(err.splitlines()) == 1


def test_demo_on_a_pretrained_base(tmp_path, tiny_tokenizer):
    """--base skips pretraining and fine-tunes the given model: here a random KoGPT2-shaped folder
    (GPT-2 architecture, KoGPT2's special tokens, tiny widths) written by transformers."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    base = tmp_path / "kogpt2-tiny"
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend, bos_token="</s>", eos_token="</s>",
                                     unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    hf_tok.save_pretrained(base)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(hf_tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(base)
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--base", str(base), "--minutes", "0.1", "--no-serve", "--eval-prompts",
                                      "4", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])["figures"]
    assert not (out / "pretrain").exists() and "pretrain_steps" not in figures
    sft = load_checkpoint(out / "sft")
    assert sft.meta["stage"] == "sft" and sft.model.config.n_embd == 32  # the base's shape, fine-tuned
    assert "</s>" in sft.tokenizer.backend.get_vocab()  # the base's tokenizer kept
    for stage in ("rm", "dpo", "ppo"):
        assert load_checkpoint(out / stage).meta["stage"] == stage
    report = (out / "report.md").read_text(encoding="utf-8")
    assert f"base model {base}" in report and "[1/7] sft" in result.stderr
