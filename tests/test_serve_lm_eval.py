"""lm-evaluation-harness scores a model served by `hangpt serve` through `local-completions` (prompt
log-probabilities via echo, greedy answers) exactly as its `hf` backend scores the same folder.
The tasks read a local JSONL file, so nothing is downloaded."""

from __future__ import annotations

import json

import pytest

from test_serve_support import running_server

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is a test dependency (pip install -e .[test])")

QUESTIONS = [
    {"question": "오늘 날씨가", "choices": [" 좋네요", " 나빠요", " 흐려요"], "answer": 0},
    {"question": "주말에 친구와", "choices": [" 영화를", " 밥을"], "answer": 1},
    {"question": "봄이 오면", "choices": [" 꽃이", " 눈이", " 비가"], "answer": 2},
]

TASKS = """
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_text: "{{{{question}}}}"
"""

LOGLIKELIHOOD = """output_type: multiple_choice
doc_to_choice: "{{choices}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""

GENERATE = """output_type: generate_until
doc_to_target: "{{choices[answer]}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


def _evaluate(model: str, model_args: str, folder):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=model, model_args=model_args, tasks=["hangpt_ll", "hangpt_gen"],
                          task_manager=TaskManager(include_path=str(folder)), log_samples=True, batch_size=1)
    samples = {task: [s["filtered_resps"] for s in rows] for task, rows in out["samples"].items()}
    return out["results"], samples


def test_local_completions_scores_equal_the_hf_backend(tiny_checkpoint, tmp_path, monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "ll.yaml").write_text(TASKS.format(name="hangpt_ll", data=data) + LOGLIKELIHOOD)
    (tasks / "gen.yaml").write_text(TASKS.format(name="hangpt_gen", data=data) + GENERATE)

    reference, reference_samples = _evaluate("hf", f"pretrained={tiny_checkpoint},dtype=float32,device=cpu", tasks)
    with running_server(tiny_checkpoint, max_tokens_limit=32) as url:
        served, served_samples = _evaluate(
            "local-completions", f"model=tiny,base_url={url}/v1/completions,tokenizer={tiny_checkpoint},"
                                 "tokenizer_backend=huggingface,num_concurrent=1,max_retries=1", tasks)
    # per question: the same log-likelihood of every choice, and the same greedy answer
    for ours, theirs in zip(served_samples["hangpt_ll"], reference_samples["hangpt_ll"]):
        assert [float(lp) for lp, _ in ours] == pytest.approx([float(lp) for lp, _ in theirs], abs=1e-3)
        assert [bool(g) for _, g in ours] == [bool(g) for _, g in theirs]
    assert served_samples["hangpt_gen"] == reference_samples["hangpt_gen"]
    assert served["hangpt_ll"]["acc,none"] == reference["hangpt_ll"]["acc,none"]
    assert served["hangpt_gen"]["exact_match,none"] == reference["hangpt_gen"]["exact_match,none"]
