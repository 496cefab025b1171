"""Where the rewards of PPO and GRPO come from, written as one spec per source:

    rm:DIR                    a reward model folder (`hangpt rm train`): its scalar score
    classifier:DIR:LABEL      a `hangpt classify` folder: the probability of LABEL for the answer
    python:FILE:FUNCTION      FUNCTION(prompt, completion) -> float, defined in FILE

A spec may carry a weight, `0.5*python:rules.py:polite`, and several specs are summed: the reward
of an answer is sum(weight_i * reward_i). Rule rewards (length limits, format checks, keywords) and
classifier probabilities cannot be flattered the way a small learned reward model can, which is
why they are the usual companions of GRPO.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError

# score_fn(prompts, responses as token ids (ending with EOS when the policy stopped)) -> rewards
ScoreFn = Callable[[list, list[list[int]]], list[float]]

KINDS = {"rm": "rm:DIR", "classifier": "classifier:DIR:LABEL", "python": "python:FILE:FUNCTION"}
_SPEC = re.compile(r"^(?:(?P<weight>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\*)?(?P<kind>[a-z]+):(?P<rest>.+)$")


@dataclass
class RewardSpec:
    weight: float
    kind: str  # a key of KINDS
    args: list[str]
    text: str  # as written, for messages and the run's settings


def parse_reward_spec(text: str) -> RewardSpec:
    """`[WEIGHT*]KIND:ARGS` -> RewardSpec, or an InputError naming the spec."""
    m = _SPEC.match(text.strip())
    if not m or m["kind"] not in KINDS:
        raise InputError(f"--reward {text!r}: expected [WEIGHT*]{' or '.join(KINDS.values())}")
    kind, rest = m["kind"], m["rest"]
    args = [rest] if kind == "rm" else rest.rsplit(":", 1)  # paths may hold ':', labels and names do not
    if len(args) != len(KINDS[kind].split(":")) - 1 or not all(args):
        raise InputError(f"--reward {text!r}: expected [WEIGHT*]{KINDS[kind]}")
    weight = float(m["weight"]) if m["weight"] else 1.0
    if not math.isfinite(weight):
        raise InputError(f"--reward {text!r}: the weight must be a finite number")
    return RewardSpec(weight, kind, args, text)


def build_scorer(specs: list[str], policy_tokenizer, device=None) -> ScoreFn:
    """One ScoreFn summing the weighted sources; answers are decoded with the policy's tokenizer
    (EOS dropped), so the scorers need not share it."""
    if not specs:
        raise InputError("give --reward-model or --reward")
    parsed = [parse_reward_spec(s) for s in specs]
    sources = [(p.weight, _text_scorer(p, device)) for p in parsed]
    eos = policy_tokenizer.eos_id

    def score(prompts, responses):
        texts = [policy_tokenizer.decode([t for t in r if t != eos]) for r in responses]
        totals = [0.0] * len(texts)
        for weight, fn in sources:
            totals = [t + weight * r for t, r in zip(totals, fn(prompts, texts))]
        return totals

    return score


def _text_scorer(spec: RewardSpec, device) -> Callable[[list, list[str]], list[float]]:
    if spec.kind == "rm":
        return reward_model_texts(spec.args[0], device, spec.text)
    if spec.kind == "classifier":
        return classifier_texts(spec.args[0], spec.args[1], device, spec.text)
    return python_texts(spec.args[0], spec.args[1], spec.text)


def _need_folder(path: str, spec: str) -> None:
    if not Path(path).is_dir():
        raise InputError(f"--reward {spec!r}: {path} is not a folder")


def reward_model_texts(rm_dir: str | Path, device=None, spec: str | None = None, max_length: int | None = None):
    """(prompts, answers) -> the reward model's scores, each answer rendered with its own chat template."""
    from .loop import device as train_device
    from .reward import load_reward_model, score_texts

    _need_folder(str(rm_dir), spec or f"rm:{rm_dir}")
    rm, tok, template, _ = load_reward_model(rm_dir)
    rm.to(device or train_device()).eval()
    return lambda prompts, texts: score_texts(rm, tok, template, prompts, texts, max_length)


def classifier_texts(clf_dir: str | Path, label: str, device=None, spec: str | None = None):
    """(prompts, answers) -> P(label | answer) under a `hangpt classify` model."""
    from .classify import encode_texts, load_classifier, predict_proba
    from .loop import device as train_device

    spec = spec or f"classifier:{clf_dir}:{label}"
    _need_folder(str(clf_dir), spec)
    clf = load_classifier(clf_dir)
    if label not in clf.labels:
        raise InputError(f"--reward {spec!r}: label {label!r} is not one the classifier knows ({', '.join(clf.labels)})")
    column = clf.labels.index(label)
    clf.model.to(device or train_device())
    n_ctx = clf.model.gpt.config.context_length

    def score(prompts, texts):
        seqs, _ = encode_texts(clf.tokenizer, texts, n_ctx)
        return predict_proba(clf.model, seqs, clf.tokenizer.pad_id)[:, column].tolist()

    return score


def python_texts(file: str, function: str, spec: str | None = None):
    """(prompts, answers) -> FUNCTION(prompt, answer) for each, from the Python file FILE."""
    spec = spec or f"python:{file}:{function}"
    path = Path(file)
    if not path.is_file():
        raise InputError(f"--reward {spec!r}: no such file {file}")
    module_spec = importlib.util.spec_from_file_location(f"hangpt_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.parent.resolve()))  # so the file can import its neighbours
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise InputError(f"--reward {spec!r}: {file} failed to load: {type(e).__name__}: {e}") from None
    finally:
        sys.path.pop(0)
    fn = getattr(module, function, None)
    if not callable(fn):
        raise InputError(f"--reward {spec!r}: {file} defines no function {function!r}")

    def score(prompts, texts):
        out = []
        for p, t in zip(prompts, texts):
            value = fn(p, t)
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise InputError(f"--reward {spec!r}: {function}() returned {value!r}, not a finite number")
            out.append(float(value))
        return out

    return score


def reward_model_scorer(rm_dir: str | Path, policy_tokenizer) -> ScoreFn:
    """The ScoreFn of one reward model folder."""
    return build_scorer([f"rm:{rm_dir}"], policy_tokenizer)
