"""Reward specs for ppo and grpo: parsing, weighted sums of rule, classifier and reward-model sources,
and one-line errors naming the bad spec."""

import re
import subprocess
import sys

import pytest

from hangpt.errors import InputError
from hangpt.train.rewards import build_scorer, parse_reward_spec

RULES = '''
def polite(prompt, completion):
    return 1.0 if completion.strip().endswith("요.") else 0.0

def length(prompt, completion):
    return len(completion)

def echo_prompt(prompt, completion):
    return len(prompt)

def broken(prompt, completion):
    return "many"
'''


@pytest.fixture
def rules(tmp_path):
    path = tmp_path / "rules.py"
    path.write_text(RULES, encoding="utf-8")
    return path


def test_parse_specs():
    s = parse_reward_spec("0.5*python:/a:b/rules.py:polite")
    assert (s.weight, s.kind, s.args) == (0.5, "python", ["/a:b/rules.py", "polite"])
    s = parse_reward_spec("classifier:models/nsmc:positive")
    assert (s.weight, s.kind, s.args) == (1.0, "classifier", ["models/nsmc", "positive"])
    s = parse_reward_spec("-2e-1*rm:out/rm")
    assert (s.weight, s.kind, s.args) == (-0.2, "rm", ["out/rm"])


@pytest.mark.parametrize("spec", ["python:rules.py", "nope:x", "rules.py", "x*python:a:b", "classifier:dir:", "rm:"])
def test_bad_spec_names_it(spec):
    with pytest.raises(InputError, match=re.escape(f"--reward {spec!r}: expected")):
        parse_reward_spec(spec)


def test_weighted_sum_of_rules(rules, tiny_tokenizer):
    tok = tiny_tokenizer
    answers = ["좋아요.", "좋다."]
    responses = [tok.encode(a) + [tok.eos_id] for a in answers]  # the EOS is dropped before scoring
    score = build_scorer([f"python:{rules}:polite", f"0.5*python:{rules}:length", f"-1*python:{rules}:echo_prompt"], tok)
    assert score(["질문", "안녕"], responses) == pytest.approx([1 + 0.5 * 4 - 2, 0 + 0.5 * 3 - 2])


def test_python_errors(rules, tiny_tokenizer, tmp_path):
    with pytest.raises(InputError, match="defines no function 'missing'"):
        build_scorer([f"python:{rules}:missing"], tiny_tokenizer)
    with pytest.raises(InputError, match="no such file"):
        build_scorer([f"python:{tmp_path / 'none.py'}:f"], tiny_tokenizer)
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n")
    with pytest.raises(InputError, match="failed to load: SyntaxError"):
        build_scorer([f"python:{bad}:f"], tiny_tokenizer)
    score = build_scorer([f"python:{rules}:broken"], tiny_tokenizer)
    with pytest.raises(InputError, match=r"broken\(\) returned 'many', not a finite number"):
        score(["q"], [[5]])


def test_classifier_reward_is_the_label_probability(tiny_checkpoint, tiny_tokenizer, tmp_path):
    from hangpt.checkpoint import load_checkpoint
    from hangpt.train.classify import SequenceClassifier, encode_texts, predict_proba, save_classifier

    ckpt = load_checkpoint(tiny_checkpoint)
    clf = SequenceClassifier(ckpt.model, 2)
    save_classifier(tmp_path / "clf", clf, ckpt.tokenizer, ["negative", "positive"], {"stage": "classify"})
    texts = ["오늘 날씨가 정말 좋네요.", "배가 고파요."]
    responses = [tiny_tokenizer.encode(t) for t in texts]
    got = build_scorer([f"classifier:{tmp_path / 'clf'}:positive"], tiny_tokenizer)(["", ""], responses)
    seqs, _ = encode_texts(ckpt.tokenizer, texts, 128)
    assert got == pytest.approx(predict_proba(clf, seqs, ckpt.tokenizer.pad_id)[:, 1].tolist(), abs=1e-5)
    with pytest.raises(InputError, match="label 'happy' is not one the classifier knows"):
        build_scorer([f"classifier:{tmp_path / 'clf'}:happy"], tiny_tokenizer)
    with pytest.raises(InputError, match="is not a folder"):
        build_scorer([f"classifier:{tmp_path / 'none'}:positive"], tiny_tokenizer)


def test_cli_bad_reward_is_one_line_exit_2(tiny_checkpoint, tmp_path, rules):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("안녕\n", encoding="utf-8")
    for command in (["grpo"], ["ppo"]):
        proc = subprocess.run([sys.executable, "-m", "hangpt", *command, "--model", str(tiny_checkpoint), "--prompts",
                               str(prompts), "--out", str(tmp_path / "out"), "--reward", f"python:{rules}:nope",
                               "--max-steps", "1"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1] == f"error: --reward 'python:{rules}:nope': {rules} defines no function 'nope'"
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("stage", [["ppo", "--mini-batch-size", "2", "--ppo-epochs", "1"], ["grpo", "--num-generations", "2"]])
def test_ppo_and_grpo_train_on_weighted_specs(stage, tiny_checkpoint, tmp_path, rules):
    import json

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("안녕\n배고파\n", encoding="utf-8")
    spec = f"-1*python:{rules}:length"  # answers are never empty text here, so every reward is negative
    proc = subprocess.run([sys.executable, "-m", "hangpt", *stage, "--model", str(tiny_checkpoint), "--prompts",
                           str(prompts), "--out", str(tmp_path / "out"), "--reward", spec, "--max-steps", "2",
                           "--batch-size", "4", "--max-new-tokens", "4", "--no-progress", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["settings"]["rewards"] == [spec]
    assert summary["steps"] == 2 and summary["final"]["reward"] < 0
