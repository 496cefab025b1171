"""Every tutorial in docs/ runs as written (its bash blocks, in order, with small settings) and
shows what its text promises: each has lesson checks on its output below, so a tutorial whose
lesson no longer appears fails, not only one that crashes."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
TUTORIALS = sorted(DOCS.glob("0*.md"))
SMALL = {"STEPS": "4", "MINUTES": "0.03"}


def bash_blocks(markdown: str) -> str:
    return "\n".join(re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tutorial(doc: Path, cwd: Path, settings: dict) -> str:
    script = bash_blocks(doc.read_text(encoding="utf-8"))
    assert script.strip(), f"{doc.name} has no bash blocks"
    env = {**os.environ, **settings, "PORT": str(free_port()), "HANGPT_DEBUG": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env = {k: v for k, v in env.items() if v is not None}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{doc.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout


# -- what each tutorial promises ---------------------------------------------------------------


def next_word(out: str, work: Path) -> None:
    """The trained GPT completes both sentences and stops; without a reachable end token greedy
    decoding repeats the corpus; no-repeat-ngram breaks the loop; the LSTM answers the same."""
    lines = out.splitlines()
    assert lines.count(" unpredictable.") == 2, "the GPT and the LSTM both complete 'The stock market is'"
    assert lines.count(" 예측할 수 없다.") == 2, "the GPT and the LSTM both complete '주식 시장은'"
    greedy = [line for line in lines if line.startswith(" unpredictable.<|endoftext|>")]
    assert len(greedy) == 2, "the two long generations"
    assert greedy[0].count("The stock market is unpredictable.") >= 1 and greedy[0].count("unpredictable.") >= 2, \
        f"greedy decoding repeats the sentence: {greedy[0]!r}"
    assert greedy[1].count("unpredictable.") == 1 and greedy[1] != greedy[0], \
        f"--no-repeat-ngram-size 3 cannot repeat the sentence: {greedy[1]!r}"
    assert "       1  '<|pad|>'" in lines


def inside_gpt(out: str, work: Path) -> None:
    """Tokens, hidden-state shapes per layer, the parameter total, next-token candidates,
    attention heatmaps and the computation graph."""
    assert re.search(r"^hidden states \(batch, tokens, width\):\n  embeddings\s+\(1, \d+, 256\)", out, re.M)
    assert re.search(r"^  total\s+[\d,]+$", out, re.M), "parameter summary ends with the total"
    assert re.search(r"^most likely next tokens:\n\s+0\.\d{4}", out, re.M)
    assert re.search(r"^\d+ attention heatmaps written to t2/attention$", out, re.M)
    assert "attention_layer0.png" in out and "attention_L0_H0.png" in out
    assert "computation graph written to t2/graph.png" in out
    assert (work / "t2/graph.png").read_bytes()[:4] == b"\x89PNG"
    assert re.search(r"^attention of layer 0: \(1, 4, \d+, \d+\) \(batch, heads, query, key\)$", out, re.M)
    assert len(re.findall(r"^hidden state \d+: \(1, \d+, 256\)$", out, re.M)) == 5  # embeddings + 4 blocks


def decoding(out: str, work: Path) -> None:
    """Beam search returns the sequences asked for; they differ from sampled text; --stop and
    --logprobs shape the JSON."""
    beams = re.findall(r"^--- prompt 1, sequence (\d) \((\w+)\)\n(.*)$", out, re.M)
    assert [b[0] for b in beams][:2] == ["1", "2"], "--num-beams 4 --num-return-sequences 2 gives two sequences"
    assert beams[0][2] != beams[1][2], "the two beams are different texts"
    sampled = {b[2] for b in beams[2:]}  # the top-p samples (--num-return-sequences 3)
    assert sampled - {b[2] for b in beams[:2]}, "sampling finds text beam search did not"
    result = json.loads(next(line for line in out.splitlines() if line.startswith('{"completions"')))
    completion = result["completions"][0]
    assert "." not in completion["text"], "the stop string is not returned"
    assert all(len(t["top"]) == 3 for t in completion["logprobs"]), "--logprobs 3 gives 3 alternatives"


def chatbot(out: str, work: Path) -> None:
    """The chatbot answers each message on its own line, with no template markers."""
    assert "Q,A,label\n" in out
    answers = out.split("chat model written to t4/chatbot")[1].split("\n", 1)[1]
    assert answers.count("\n") >= 3, f"two chat answers and one generate --chat answer, a line each: {answers!r}"
    assert not re.search(r"<usr>|<sys>|</s>|<\|endoftext\|>|<\|pad\|>", answers), answers
    settings = json.loads((work / "t4/chatbot/hangpt.json").read_text(encoding="utf-8"))
    assert settings["chat_template"]["name"] == "kogpt2"


def rlhf(out: str, work: Path) -> None:
    """Pairs from Q/A data, rewards printed per answer, PPO's per-step log, and each model's answer."""
    assert re.search(r"^\d+ preference pairs written to t5/prefs.jsonl$", out, re.M)
    first = json.loads(next(line for line in out.splitlines() if line.startswith('{"prompt"')))
    assert first["chosen"] != first["rejected"]
    assert re.search(r"^[+-]\d+\.\d{4}  맛있는 거 챙겨 드세요\.$", out, re.M)
    assert re.search(r"^[+-]\d+\.\d{4}  우산 꼭 챙기세요\.$", out, re.M)
    log = [json.loads(line) for line in (work / "t5/ppo/train_log.jsonl").read_text().splitlines()]
    assert {"reward", "kl", "entropy", "clipfrac"} <= set(log[-1])
    assert re.search(r"^== sft\n.+\n== dpo\n.+\n== ppo\n.+", out, re.M)


def playground(out: str, work: Path) -> None:
    """The API answers in OpenAI's shape (n=2 choices), streams through the openai client, and a
    ranking of 3 answers becomes 3 preference pairs."""
    line = next(line for line in out.splitlines() if '"chat.completion"' in line)
    completion, _ = json.JSONDecoder().raw_decode(line)  # curl's output ends without a newline
    assert completion["object"] == "chat.completion" and len(completion["choices"]) == 2
    assert all(c["message"]["role"] == "assistant" for c in completion["choices"])
    assert re.search(r"3 preference pairs from 1 rankings written to t6/prefs.jsonl$", out, re.M)  # after curl's reply
    pairs = [json.loads(line) for line in (work / "t6/prefs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {
        ("맛있는 거 챙겨 드세요.", "우산 꼭 챙기세요."), ("맛있는 거 챙겨 드세요.", "배고파"), ("우산 꼭 챙기세요.", "배고파")}


def nsmc(out: str, work: Path) -> None:
    """Accuracy and the confusion matrix on the test file, then a label and probability per text."""
    assert re.search(r"^accuracy \d+\.\d\d% on 100 texts$", out, re.M)
    assert re.search(r"^true \\ predicted\s+0\s+1$", out, re.M)
    assert re.search(r"^\d+\.\d\d% label [01]: 정말 재미있어요$", out, re.M)
    assert re.search(r"^\d+\.\d\d% label [01]: 너무 지루했다$", out, re.M)


def nlp_basics(out: str, work: Path) -> None:
    """Morphemes with tags, stems and stopwords; word counts and pictures; the TF-IDF worked example's
    numbers; word2vec neighbours and the PCA picture; the three baselines' accuracy tables."""
    lines = out.splitlines()
    assert lines[:2] == ["아버지 가 방 에 들어가 시 ᆫ다", "아버지/NNG 가/JKS 방/NNG 에/JKB 들어가/VV 시/EP ᆫ다/EC"]
    assert "이 영화 진짜 재밌다 점 만점 점 ㅋㅋ" in lines and "가 에 들어가 시 ᆫ다" in lines
    assert re.search(r"^   1  \S+  \d+$", out, re.M) and re.search(r"^  10  \S+  \d+$", out, re.M)
    assert all((work / f"t8/{name}.png").read_bytes()[:4] == b"\x89PNG" for name in ("freq", "cloud", "pca"))
    assert ["먹고", "2", "1.5108"] in [line.split() for line in lines]  # df 2: ln(5/3) + 1
    assert ["사과", "1", "1.9163"] in [line.split() for line in lines]  # df 1: ln(5/2) + 1
    assert "d3    0.0000  1.9163  1.9163  0.0000  3.0217  0.0000  0.0000  0.0000  0.0000" in lines  # tf 2 x 1.5108
    assert "  0.8317  d3  길고 노란 바나나 바나나" in lines and "  0.3575  d2  먹고 싶은 바나나" in lines
    assert re.search(r"^word2vec \(CBOW\) written to t8/w2v-cbow: \d+ words x 50 dimensions", out, re.M)
    assert re.search(r"^word2vec \(skip-gram\) written to t8/w2v-sg: \d+ words x 50 dimensions", out, re.M)
    neighbours = lines[lines.index("사람") + 1:lines.index("사람") + 6]
    assert len(neighbours) == 5 and all(re.fullmatch(r"  -?[01]\.\d{4}  \S+", n) for n in neighbours)
    assert "아침 + 밤 - 저녁" in lines
    assert len(re.findall(r"^accuracy \d+\.\d\d% on 100 texts$", out, re.M)) == 3
    assert len(re.findall(r"^true \\ predicted\s+0\s+1$", out, re.M)) == 3


# tutorial -> (its lesson checks, settings); tutorial 1's lesson needs its real (150-step, ~1 min) run
LESSONS = {
    "01-next-word": (next_word, {"STEPS": None, "MINUTES": None}),
    "02-inside-gpt": (inside_gpt, SMALL),
    "03-decoding": (decoding, SMALL),
    "04-chatbot": (chatbot, SMALL),
    "05-rlhf": (rlhf, SMALL),
    "06-playground": (playground, SMALL),
    "07-nsmc": (nsmc, SMALL),
    "08-nlp-basics": (nlp_basics, {**SMALL, "EPOCHS": "5"}),
}


@pytest.mark.parametrize("doc", TUTORIALS, ids=[d.stem for d in TUTORIALS])
def test_tutorial_shows_its_lesson(doc, tmp_path):
    check, settings = LESSONS.get(doc.stem, (None, SMALL))
    out = run_tutorial(doc, tmp_path, settings)
    if check is not None:  # a new tutorial: add its lesson checks to LESSONS
        check(out, tmp_path)
