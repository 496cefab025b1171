"""`hangpt rm rank-samples`: preference pairs from a policy's own answers ranked by a reward, and
DPO on them raising that reward on held-out prompts."""

import json
import subprocess
import sys

from test_grpo import HELD_OUT, QUESTIONS, _held_out_reward, sft_both_styles  # noqa: F401 (a fixture)

from hangpt.train.ranked_pairs import _best_and_worst


class _Chars:
    """A stand-in tokenizer: ids are character codes, 0 is the end token."""

    eos_id = 0

    def decode(self, ids):
        return "".join(map(chr, ids))


def _ids(text, ended=True):
    return [ord(c) for c in text] + ([0] if ended else [])


def test_best_finished_answer_against_the_worst_answer():
    tok = _Chars()
    group = [(0.2, _ids("bb")), (0.9, _ids("cut sho", ended=False)), (0.5, _ids("aa")), (-1.0, _ids("zz", ended=False))]
    # the top score was cut short: the best answer that ended is chosen; the worst may be unfinished
    assert _best_and_worst(group, tok, 0) == ("aa", "zz")
    assert _best_and_worst([(1.0, _ids("x", ended=False)), (0.0, _ids("y", ended=False))], tok, 0) is None
    assert _best_and_worst([(0.3, _ids("x")), (0.3, _ids("y"))], tok, 0) is None  # a tie teaches nothing
    assert _best_and_worst([(0.9, _ids("x")), (0.1, [0])], tok, 0) is None  # an empty answer takes no part


def test_rank_samples_then_dpo_raises_the_reward(sft_both_styles, tmp_path):
    from hangpt.data.preferences import read_preferences
    from hangpt.train.dpo import train_dpo
    from hangpt.train.loop import TrainConfig

    rules = tmp_path / "rules.py"
    rules.write_text("def polite(p, c):\n    return float(c.strip().endswith('요.'))\n", encoding="utf-8")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(QUESTIONS * 4), encoding="utf-8")
    out = tmp_path / "ranked.jsonl"
    proc = subprocess.run([sys.executable, "-m", "hangpt", "rm", "rank-samples", "--model", str(sft_both_styles),
                           "--prompts", str(prompts), "--reward", f"python:{rules}:polite", "--num-samples", "6",
                           "--max-new-tokens", "16", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    pairs = read_preferences(out)
    assert summary["prompts"] == len(QUESTIONS) * 4 and len(pairs) == summary["pairs"] >= len(QUESTIONS)
    assert all(p.prompt in QUESTIONS for p in pairs)
    assert all(p.chosen.endswith("요.") and not p.rejected.endswith("요.") for p in pairs)

    cfg = TrainConfig(out=tmp_path / "dpo", batch_size=8, lr=1e-3, max_steps=30, progress=False, save_every=1000,
                      log_every=1000, seed=0)
    train_dpo(sft_both_styles, pairs, cfg, beta=0.1, rpo_alpha=1.0, max_length=64, val_fraction=0.0, log=lambda *a: None)
    before, after = _held_out_reward(sft_both_styles), _held_out_reward(tmp_path / "dpo")
    assert after > before + 0.15, (before, after)


def test_rank_samples_needs_a_reward(sft_both_styles, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("배고파\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "hangpt", "rm", "rank-samples", "--model", str(sft_both_styles),
                           "--prompts", str(prompts), "--out", str(tmp_path / "p.jsonl")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].endswith("give --reward-model or --reward")
    assert "Traceback" not in proc.stderr and not (tmp_path / "p.jsonl").exists()
    proc = subprocess.run([sys.executable, "-m", "hangpt", "rm", "rank-samples", "--model", str(sft_both_styles),
                           "--prompts", str(prompts), "--reward", "python:x.py:f", "--max-new-tokens", "4096",
                           "--out", str(tmp_path / "p.jsonl")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--max-new-tokens 4096: must be below the model's context length" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "hangpt", "rm", "rank-samples", "--model", str(sft_both_styles),
                           "--prompts", str(prompts), "--reward", "python:x.py:f", "--temperature", "0",
                           "--out", str(tmp_path / "p.jsonl")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: --temperature 0")
