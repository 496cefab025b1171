"""A catalogue of bad command lines (files, folders, flags, config values) driven through every
command: each exits 2 with one `error:` line that names what is wrong and no exception class name,
and leaves its inputs untouched."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from hangpt.cli import COMMANDS, main

SEED_HUGE = str(2**70)

# (command line, text the error line must contain); {names} are the files made by `workspace`
CASES = [
    # -- option parsing -----------------------------------------------------------------------
    ("sft --bogus-flag 1 --data {qa} --out {out}", "--bogus-flag"),
    ("sft --data {qa}", "--out"),
    ("sft --data {qa} --out {out}", "--model"),
    ("nosuchcommand", "nosuchcommand"),
    ("sft --model {ckpt} --data {qa} --out {out} --epochs nan", "--epochs"),
    ("sft --model {ckpt} --data {qa} --out {out} --epochs inf", "--epochs"),
    ("sft --model {ckpt} --data {qa} --out {out} --epochs -1", "--epochs"),
    ("sft --model {ckpt} --data {qa} --out {out} --epochs many", "--epochs"),
    ("sft --model {ckpt} --data {qa} --out {out} --seed " + SEED_HUGE, "--seed"),
    ("pretrain --data {corpus} --out {out} --max-steps 1 --seed -5", "--seed"),
    ("sft --model {ckpt} --data {qa} --out {out} --lr nan", "--lr"),
    ("sft --model {ckpt} --data {qa} --out {out} --lr 0", "--lr"),
    ("sft --model {ckpt} --data {qa} --out {out} --time-budget inf", "--time-budget"),
    ("sft --model {ckpt} --data {qa} --out {out} --batch-size 0", "--batch-size"),
    ("sft --model {ckpt} --data {qa} --out {out} --max-steps 0", "--max-steps"),
    ("sft --model {ckpt} --data {qa} --out {out} --val-fraction nan", "--val-fraction"),
    ("sft --model {ckpt} --data {qa} --out {out} --val-fraction 2", "--val-fraction"),
    ("sft --model {ckpt} --data {qa} --out {out} --weight-decay -1", "--weight-decay"),
    ("rm train --model {ckpt} --data {prefs} --out {out} --epochs 0", "--epochs"),
    ("dpo --model {ckpt} --data {prefs} --out {out} --beta 0", "--beta"),
    ("dpo --model {ckpt} --data {prefs} --out {out} --seed " + SEED_HUGE, "--seed"),
    ("ppo --model {ckpt} --reward-model {ckpt} --prompts {prompts} --out {out} --kl-coef nan", "--kl-coef"),
    ("ppo --model {ckpt} --reward-model {ckpt} --prompts {prompts} --out {out} --max-new-tokens 0", "--max-new-tokens"),
    ("grpo --model {ckpt} --reward nope:x --prompts {prompts} --out {out}", "nope:x"),
    ("grpo --model {ckpt} --reward rm:{ckpt} --prompts {prompts} --out {out} --batch-size 6", "--num-generations"),
    ("grpo --model {ckpt} --prompts {prompts} --out {out}", "--reward"),
    ("compare --policy {ckpt} --prompts {prompts} --reward rm:{ckpt}", "--policy"),
    ("classify train --model {ckpt} --data {labeled} --out {out} --dropout 1", "--dropout"),
    ("generate --model {ckpt} --prompt hi --seed " + SEED_HUGE, "--seed"),
    ("generate --model {ckpt} --prompt hi --temperature -1", "temperature"),
    ("generate --model {ckpt} --prompt hi --top-p 1.5", "--top-p"),
    ("generate --model {ckpt} --prompt hi --num-beams 0", "num-beams"),
    ("generate --model {ckpt} --prompt hi --max-new-tokens 0", "max-new-tokens"),
    ("generate --model {ckpt} --prompt hi --logit-bias 5", "--logit-bias"),
    ("generate --model {ckpt} --prompt hi --early-stopping maybe", "--early-stopping"),
    ("serve --model {ckpt} --port 70000", "--port"),
    ("serve --model {ckpt} --max-batch-size 0", "--max-batch-size"),
    ("tokenizer decode --model {ckpt} abc", "abc"),
    ("tokenizer train --data {corpus} --out {out} --vocab-size 5", "vocab"),
    # -- --out: finished, resumable, unwritable ---------------------------------------------------
    ("sft --model {ckpt} --data {qa} --out {finished} --max-steps 1", "--overwrite"),
    ("sft --model {ckpt} --data {qa} --out {resumable} --max-steps 1", "--resume"),
    ("sft --data {qa} --out {resumable} --max-steps 1 --resume", "train_state.pt"),
    ("sft --data {qa} --out {finished} --max-steps 1 --resume", "already finished"),
    ("sft --data {qa} --out {out} --max-steps 1 --resume", "no checkpoint"),
    ("rm train --model {ckpt} --data {prefs} --out {finished} --max-steps 1", "--overwrite"),
    ("dpo --model {ckpt} --data {prefs} --out {finished} --max-steps 1", "--overwrite"),
    ("dpo --model {ckpt} --data {prefs} --out {resumable} --max-steps 1", "--resume"),
    ("ppo --model {ckpt} --reward-model {ckpt} --prompts {prompts} --out {finished} --max-steps 1", "--overwrite"),
    ("classify train --model {ckpt} --data {labeled} --out {finished} --max-steps 1", "--overwrite"),
    ("pretrain --data {corpus} --out {finished} --max-steps 1", "--overwrite"),
    ("sft --model {ckpt} --data {qa} --out {under_file}/run --max-steps 1", "--out"),
    ("rm train --model {ckpt} --data {prefs} --out {under_file}/run --max-steps 1", "--out"),
    ("pretrain --data {corpus} --out {under_file}/run --max-steps 1", "--out"),
    ("sft --model {ckpt} --data {qa} --out {qa} --max-steps 1", "is a file"),
    # -- data files -----------------------------------------------------------------------------
    ("sft --model {ckpt} --data {missing} --out {out}", "missing"),
    ("sft --model {ckpt} --data {folder} --out {out}", "folder"),
    ("sft --model {ckpt} --data {empty} --out {out}", "empty"),
    ("sft --model {ckpt} --data {garbage} --out {out}", "garbage"),
    ("sft --model {ckpt} --data {no_columns} --out {out}", "no_columns"),
    ("sft --model {ckpt} --data {bad_json} --out {out}", "bad.json"),
    ("rm train --model {ckpt} --data {bad_json} --out {out}", "bad.json"),
    ("rm train --model {ckpt} --data {qa} --out {out}", "qa.csv"),
    ("dpo --model {ckpt} --data {empty} --out {out}", "empty"),
    ("ppo --model {ckpt} --reward-model {ckpt} --prompts {empty} --out {out}", "empty"),
    ("classify train --model {ckpt} --data {no_columns} --out {out}", "no_columns"),
    ("classify eval --model {ckpt} --data {labeled}", "ckpt"),
    ("classify predict --model {ckpt}", "--text"),
    ("pretrain --data {missing} --out {out} --max-steps 1", "missing"),
    ("eval --model {ckpt} --data {missing}", "missing"),
    ("rm make-pairs --data {garbage} --out {out}/pairs.jsonl", "garbage"),
    ("feedback export --db {missing} --out {out}/pairs.jsonl", "missing"),
    ("feedback export --db {garbage} --out {out}/pairs.jsonl", "garbage"),
    ("serve --model {ckpt} --feedback-db {garbage}", "garbage"),
    ("serve --model {ckpt} --feedback-db {under_file}/fb.sqlite", "fb.sqlite"),
    # -- checkpoints ------------------------------------------------------------------------------
    ("generate --model {missing} --prompt hi", "missing"),
    ("generate --model {qa} --prompt hi", "qa.csv"),
    ("generate --model {folder} --prompt hi", "config.json"),
    ("generate --model {config_list} --prompt hi", "config.json"),
    ("generate --model {config_types} --prompt hi", "config.json"),
    ("generate --model {config_invalid} --prompt hi", "config.json"),
    ("generate --model {no_weights} --prompt hi", "no_weights"),
    ("generate --model {bad_weights} --prompt hi", "model.safetensors"),
    ("generate --model {no_tokenizer} --prompt hi", "no_tokenizer"),
    ("sft --model {config_list} --data {qa} --out {out}", "config.json"),
    ("chat --model {config_types}", "config.json"),
    ("inspect --model {config_list} --text hi", "config.json"),
    ("inspect --model {ckpt} --text hi --layer 9", "--layer"),
    ("rm score --model {ckpt} --prompt q --response a", "ckpt"),
    ("ppo --model {ckpt} --reward-model {ckpt} --prompts {prompts} --out {out} --max-steps 1", "ckpt"),
    ("tokenizer encode --model {missing} --text hi", "missing"),
    ("merge --model {ckpt} --out {out}", "ckpt"),
    ("lstm --data {missing} --tokenizer {ckpt} --prompt hi", "missing"),
    ("lstm --data {corpus} --tokenizer {ckpt} --prompt hi --max-steps 0", "--max-steps"),
]

CASES = [(command, named) for command, named in CASES  # commands of this installation
         if command.split()[0] in COMMANDS or command.startswith("nosuchcommand")]
CLASS_NAME = re.compile(r"\b\w*(Error|Exception|Warning)\b|Traceback")


def _write_checkpoint_variants(ckpt: Path, root: Path) -> dict[str, Path]:
    variants = {}
    for name, config in [("config_list", "[1, 2]"), ("config_invalid", "{"),
                         ("config_types", json.dumps({**json.loads((ckpt / "config.json").read_text()),
                                                      "n_embd": "wide", "n_layer": [2]}))]:
        folder = shutil.copytree(ckpt, root / name)
        (folder / "config.json").write_text(config)
        variants[name] = folder
    variants["no_weights"] = shutil.copytree(ckpt, root / "no_weights")
    (variants["no_weights"] / "model.safetensors").unlink()
    variants["bad_weights"] = shutil.copytree(ckpt, root / "bad_weights")
    (variants["bad_weights"] / "model.safetensors").write_bytes(b"\x00" * 64)
    variants["no_tokenizer"] = shutil.copytree(ckpt, root / "no_tokenizer")
    for f in variants["no_tokenizer"].glob("tokenizer*"):
        f.unlink()
    return variants


@pytest.fixture(scope="module")
def workspace(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    ckpt = shutil.copytree(tiny_checkpoint, root / "ckpt")
    paths = {"ckpt": ckpt, **_write_checkpoint_variants(ckpt, root)}
    paths["finished"] = shutil.copytree(ckpt, root / "finished")
    paths["resumable"] = shutil.copytree(ckpt, root / "resumable")
    (paths["resumable"] / "train_state.pt").write_bytes(b"not a torch file")
    files = {
        "qa": ("qa.csv", "Q,A\n" + "".join(f"질문 {i},답 {i}\n" for i in range(8))),
        "prefs": ("prefs.jsonl", "".join(json.dumps({"prompt": f"q{i}", "chosen": "좋은 답", "rejected": "나쁜 답"},
                                                    ensure_ascii=False) + "\n" for i in range(8))),
        "prompts": ("prompts.txt", "안녕하세요\n날씨 어때요\n"),
        "corpus": ("corpus.txt", "오늘 날씨가 좋네요.\n" * 50),
        "labeled": ("labeled.tsv", "id\tdocument\tlabel\n" + "".join(f"{i}\t문장 {i}\t{i % 2}\n" for i in range(8))),
        "empty": ("empty.jsonl", ""),
        "no_columns": ("no_columns.csv", "x,y\n1,2\n"),
        "bad_json": ("bad.json", '{"prompt": "q", "chosen": '),
        "under_file": ("a_file", "a file, not a folder"),
    }
    for key, (name, text) in files.items():
        paths[key] = root / name
        paths[key].write_text(text, encoding="utf-8")
    paths["garbage"] = root / "garbage.bin"
    paths["garbage"].write_bytes(bytes(range(256)) * 8)
    paths["folder"] = root / "folder"
    paths["folder"].mkdir()
    paths["missing"] = root / "missing.csv"
    return root, paths


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_the_catalogue_covers_every_command():
    covered = {case.split()[0] for case, _ in CASES}
    assert len(CASES) >= 60
    assert covered >= set(COMMANDS) - {"demo", "nlp"}, set(COMMANDS) - covered  # demo and nlp: tests of their own


@pytest.mark.parametrize("command, named", CASES, ids=[c for c, _ in CASES])
def test_bad_input_is_one_error_line_and_exit_2(command, named, workspace, tmp_path, capsys, monkeypatch):
    import uvicorn

    root, paths = workspace
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started despite the bad input"))
    monkeypatch.chdir(tmp_path)
    before = _snapshot(root)
    argv = [part.format(**paths, out=tmp_path / "out") for part in command.split()]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert e.value.code == 2, err
    assert len(errors) == 1 and err.rstrip("\n").splitlines()[-1] == errors[0], err
    assert not CLASS_NAME.search(errors[0]), errors[0]
    assert named.format(**paths) in errors[0], errors[0]
    assert _snapshot(root) == before
