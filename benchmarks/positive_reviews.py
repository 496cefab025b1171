"""Positive movie reviews, the Korean counterpart of TRL's classic IMDb experiment: a GPT pretrained
on NSMC reviews continues the first words of reviews; the reward is the hangpt NSMC classifier's
probability of "positive" (`--reward classifier:DIR:1`); PPO and GRPO each train for the same
time budget. The judge is independent of the reward: TF-IDF (character 1-4-grams) + logistic
regression trained on NSMC train, never used in training. Evaluated on the first words of held-out
test reviews: share of continuations the judge calls positive, KL to the base model (nats per
continuation, on the policy's own samples), mean length and distinct-2 (no collapse into one phrase).

    python benchmarks/positive_reviews.py --work /tmp/posrev --minutes 20
    python benchmarks/positive_reviews.py --pretrained /tmp/pt_nsmc --classifier /tmp/nsmc_classifier

Without --pretrained / --classifier the script pretrains a tiny GPT on the training reviews and
fine-tunes the classifier from it first (--pretrain-minutes, --classify-minutes).
Last line: RESULT positive_reviews base_pos=... ppo_pos=... grpo_pos=... ppo_kl=... grpo_kl=...
base_distinct2=... ppo_distinct2=... grpo_distinct2=...
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nsmc"


def hangpt(*args) -> None:
    subprocess.run([sys.executable, "-m", "hangpt", *map(str, args)], check=True)


def first_words(texts: list[str], n_words: int, count: int, seed: int) -> list[str]:
    """The first n_words words of `count` reviews that have at least n_words + 3 words."""
    long_enough = [t.split() for t in texts if len(t.split()) >= n_words + 3]
    random.Random(seed).shuffle(long_enough)
    return [" ".join(words[:n_words]) for words in long_enough[:count]]


def continuation_model(pretrained: Path, out: Path) -> Path:
    """The pretrained LM with a template that renders a prompt as plain text, so the policy
    continues the review instead of answering it."""
    from hangpt.checkpoint import load_checkpoint, save_checkpoint
    from hangpt.templates import ChatTemplate

    ckpt = load_checkpoint(pretrained)
    template = ChatTemplate(name="continue", system="", user="{content}", assistant_start="", assistant_end="{eos}")
    save_checkpoint(out, ckpt.model, ckpt.tokenizer, {**ckpt.meta, "chat_template": template.to_dict()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/positive_reviews")
    p.add_argument("--train-file", default=str(DATA / "ratings_train.txt.gz"))
    p.add_argument("--test-file", default=str(DATA / "ratings_test.txt.gz"))
    p.add_argument("--pretrained", default=None, help="a GPT pretrained on NSMC reviews [pretrain one]")
    p.add_argument("--classifier", default=None, help="a `hangpt classify` NSMC folder (labels 0/1) [train one]")
    p.add_argument("--pretrain-minutes", type=float, default=20.0)
    p.add_argument("--classify-minutes", type=float, default=10.0)
    p.add_argument("--minutes", type=float, default=20.0, help="training budget of PPO and of GRPO, each")
    p.add_argument("--prompt-words", type=int, default=2)
    p.add_argument("--train-prompts", type=int, default=2000)
    p.add_argument("--eval-prompts", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not Path(args.train_file).exists():
        sys.exit(f"no NSMC data: {args.train_file}")

    from hangpt.checkpoint import load_checkpoint
    from hangpt.data.classification import read_labeled_texts
    from hangpt.nlp.baselines import train_baseline
    from hangpt.train.compare import evaluate_policy
    from hangpt.train.grpo import GRPOConfig, train_grpo
    from hangpt.train.loop import TrainConfig
    from hangpt.train.ppo import PPOConfig, train_ppo
    from hangpt.train.rewards import build_scorer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_file = args.train_file
    train, test = read_labeled_texts(train_file), read_labeled_texts(args.test_file)
    pretrained = Path(args.pretrained or work / "pretrain")
    if not args.pretrained and not (pretrained / "config.json").exists():
        hangpt("pretrain", "--data", train_file, "--text-column", "document", "--preset", "tiny", "--out", pretrained,
               "--time-budget", args.pretrain_minutes, "--seed", args.seed)
    classifier = Path(args.classifier or work / "classifier")
    if not args.classifier and not (classifier / "config.json").exists():
        hangpt("classify", "train", "--model", pretrained, "--data", train_file, "--out", classifier,
               "--time-budget", args.classify_minutes, "--seed", args.seed)
    base = continuation_model(pretrained, work / "base")

    print("judge: TF-IDF + logistic regression on NSMC train", file=sys.stderr)
    judge_model = train_baseline(list(train.texts), [str(x) for x in train.labels], "tfidf-char", seed=args.seed)
    tok = load_checkpoint(base).tokenizer

    def judge(prompts, responses):
        texts = [tok.decode([t for t in r if t != tok.eos_id]) for r in responses]
        return [float(label == "1") for label in judge_model.predict(texts)]

    train_prompts = first_words(list(train.texts), args.prompt_words, args.train_prompts, args.seed)
    eval_prompts = first_words(list(test.texts), args.prompt_words, args.eval_prompts, args.seed)
    reward = [f"classifier:{classifier}:1"]

    def cfg(name, lr):
        return TrainConfig(out=work / name, batch_size=16, lr=lr, time_budget=args.minutes, save_every=50, log_every=10,
                           seed=args.seed, weight_decay=0.0, overwrite=True, progress=False)

    train_ppo(base, train_prompts, None, cfg("ppo", 1e-5), PPOConfig(mini_batch_size=8, ppo_epochs=2,
              max_new_tokens=args.max_new_tokens, kl_coef=0.05), rewards=reward)
    train_grpo(base, train_prompts, None, cfg("grpo", 1e-5), GRPOConfig(num_generations=8,
               max_completion_length=args.max_new_tokens), rewards=reward)

    reference = load_checkpoint(base).model
    score_fn = build_scorer(reward, tok)
    rows = {name: evaluate_policy(work / name, reference, eval_prompts, score_fn, args.max_new_tokens, args.seed,
                                  judges={"positive": judge})
            for name in ("base", "ppo", "grpo")}
    print(f"{len(eval_prompts)} held-out prompts (first {args.prompt_words} words of NSMC test reviews)")
    print(f"{'policy':8}{'reward':>10}{'judge pos':>11}{'KL':>9}{'length':>9}{'distinct2':>11}")
    for name, r in rows.items():
        print(f"{name:8}{r['reward']:>10.3f}{r['judge/positive']:>11.3f}{r['kl']:>9.2f}{r['length']:>9.1f}"
              f"{r['distinct2']:>11.3f}")
    print("RESULT positive_reviews " + " ".join(
        [f"{n}_pos={rows[n]['judge/positive']:.3f}" for n in rows] + [f"{n}_kl={rows[n]['kl']:.2f}" for n in ("ppo", "grpo")]
        + [f"{n}_distinct2={rows[n]['distinct2']:.3f}" for n in rows]))


if __name__ == "__main__":
    main()
