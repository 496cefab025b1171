"""The demo end to end on the embedded data with a tiny budget: every stage writes its checkpoint
and its figure, and the report ties them together."""

import json

from hangpt.checkpoint import load_checkpoint
from hangpt.cli import main


def test_demo_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    try:
        main(["demo", "--minutes", "0.1", "--no-serve", "--eval-prompts", "4", "--out", str(out), "--json"])
    except SystemExit as e:
        assert e.code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    figures = summary["figures"]
    for stage in ("pretrain", "sft", "rm", "dpo", "ppo"):
        ckpt = load_checkpoint(out / stage)
        assert ckpt.meta["stage"] == stage
        assert not (out / stage / "train_state.pt").exists()  # finished runs keep no optimizer state
    for key in ("tokenizer_bytes_per_token", "pretrain_val_bpb", "sft_val_answer_loss", "rm_val_accuracy",
                "dpo_val_accuracy", "ppo_train_reward", "sft_heldout_reward", "dpo_heldout_kl", "ppo_heldout_kl"):
        assert isinstance(figures[key], (int, float)), key
    assert 0 <= figures["rm_val_accuracy"] <= 1
    assert figures["preference_pairs"] > 400
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "validation bits per byte" in report and "ppo/reward_curve.png" in report
    assert (out / "pretrain" / "loss_curve.png").stat().st_size > 1000


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
