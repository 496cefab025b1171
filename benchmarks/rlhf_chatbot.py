"""RLHF on ChatbotData: SFT -> reward model -> DPO, PPO and GRPO, measured on held-out questions.

Preferences are made from the Q/A pairs (chosen = the true answer, rejected = another question's
answer or a corrupted copy: `hangpt rm make-pairs`). The training questions are split in two
halves: the reward model the policies are trained against ("rm") learns from the first, a judge
reward model ("judge_rm") from the second, so a policy that only flatters "rm" wins nothing by the
judge. DPO trains on the SFT model's own answers ranked by "rm" (`hangpt rm rank-samples`); PPO and
GRPO on "rm" plus a rule reward against repeated text (`--repeat-penalty`). Reported: both reward
models' pairwise accuracy on held-out pairs; for SFT, DPO, PPO and GRPO, on answers sampled
(temperature 1, two per held-out question), the mean "rm" reward, the mean
judge reward and the win rate over SFT by the judge (ties count half), the KL to SFT (sum over
answer tokens of log pi - log pi_sft on the policy's own samples), the mean answer length and its
ratio to SFT's, and distinct-2.

    python benchmarks/rlhf_chatbot.py [--sft DIR] [--work /tmp/rlhf_chatbot] [--*-minutes N] [--dpo-epochs N]

Without --sft, a small GPT (4 layers, 128 wide) with a tokenizer trained on the Q/A text is
fine-tuned from scratch first. Last line: RESULT rlhf_chatbot rm_acc=... sft_reward=... ...
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chatbot_data" / "ChatbotData.csv"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_config(out: Path, minutes: float | None, batch_size: int, lr: float, seed: int):
    from hangpt.train.loop import TrainConfig

    return TrainConfig(out=out, batch_size=batch_size, lr=lr, time_budget=minutes, eval_every=10**9,
                       save_every=10**9, log_every=20, progress=False, seed=seed)


def no_repeats(prompt: str, completion: str) -> float:
    """A rule reward: 0 for an answer whose character trigrams (spaces ignored) are all distinct,
    down towards -1 for one made of a repeated phrase."""
    text = completion.replace(" ", "")
    grams = [text[i : i + 3] for i in range(len(text) - 2)]
    return len(set(grams)) / len(grams) - 1 if grams else 0.0


def make_sft(work: Path, convs: list, minutes: float, seed: int) -> Path:
    """A small GPT with its own tokenizer, fine-tuned from scratch on the training Q/A pairs."""
    from hangpt.checkpoint import save_checkpoint
    from hangpt.models import GPT, GPTConfig
    from hangpt.tokenizer import train_tokenizer
    from hangpt.train.sft import train_sft

    texts = [m["content"] for c in convs for m in c]
    tok = train_tokenizer(iter(texts), vocab_size=3000)
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=tok.vocab_size, n_positions=96, n_embd=128, n_layer=4, n_head=4,
                    bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)
    save_checkpoint(work / "base", GPT(cfg), tok, {"stage": "pretrain"})
    train_sft(work / "base", convs, train_config(work / "sft", minutes, 32, 1e-3, seed), template_name="default",
            max_length=96, val_fraction=0.0, log=log)
    return work / "sft"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--sft", default=None, help="An SFT checkpoint to start from (default: make one).")
    ap.add_argument("--work", default="/tmp/rlhf_chatbot")
    ap.add_argument("--sft-minutes", type=float, default=5)
    ap.add_argument("--rm-minutes", type=float, default=3, help="for each of the two reward models")
    ap.add_argument("--dpo-epochs", type=float, default=2, help="passes over the ranked pairs (more overfits them)")
    ap.add_argument("--ppo-minutes", type=float, default=5)
    ap.add_argument("--grpo-minutes", type=float, default=5)
    ap.add_argument("--dpo-pairs", type=int, default=4000,
                    help="DPO trains on the ranked answers to at most this many training questions")
    ap.add_argument("--repeat-penalty", type=float, default=3.0,
                    help="weight of the no_repeats rule added to PPO's and GRPO's reward (0: the reward model alone)")
    ap.add_argument("--eval-prompts", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"{args.data}: not found (the benchmark needs ChatbotData.csv)")

    from hangpt.data.conversations import read_conversations
    from hangpt.data.preferences import make_pairs
    from hangpt.train.compare import compare_policies
    from hangpt.train.dpo import train_dpo
    from hangpt.train.grpo import GRPOConfig, train_grpo
    from hangpt.train.ppo import PPOConfig, train_ppo
    from hangpt.train.ranked_pairs import rank_samples
    from hangpt.train.reward import encode_pairs, evaluate_pairs, load_reward_model, train_reward_model

    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    convs = read_conversations(args.data)
    random.Random(args.seed).shuffle(convs)
    test_convs, train_convs = convs[: args.eval_prompts], convs[args.eval_prompts :]
    t0 = time.time()
    sft = Path(args.sft) if args.sft else make_sft(work, train_convs, args.sft_minutes, args.seed)
    log(f"SFT model: {sft} ({time.time() - t0:.0f} s)")

    # two reward models on disjoint halves of the questions: "rm" is the one the policies are trained
    # against, "judge_rm" only judges them, so a policy that flatters "rm" gains nothing there
    half = len(train_convs) // 2
    # two rejected answers per question (different draws), so the reward model sees each real answer
    # beaten by more than one alternative and memorises less
    halves = {name: make_pairs(part, seed=args.seed) + make_pairs(part, seed=args.seed + 1000)
              for name, part in (("rm", train_convs[:half]), ("judge_rm", train_convs[half:]))}
    held_out = {mode: make_pairs(test_convs, seed=args.seed + 1, rejected=mode) for mode in ("mismatched", "corrupted")}
    acc = {}
    for name, pairs in halves.items():
        train_reward_model(sft, pairs, train_config(work / name, args.rm_minutes, 16, 3e-4, args.seed), max_length=96,
                           val_fraction=0.0, log=log)
        rm, rm_tok, rm_template, _ = load_reward_model(work / name)
        for mode, pairs_of_mode in held_out.items():
            acc[name, mode] = evaluate_pairs(rm, encode_pairs(pairs_of_mode, rm_template, rm_tok, 96), rm_tok.pad_id)["val_accuracy"]
        log(f"{name}: held-out pairwise accuracy {acc[name, 'mismatched']:.3f} mismatched, "
            f"{acc[name, 'corrupted']:.3f} corrupted ({time.time() - t0:.0f} s)")
    rm_acc = (acc["rm", "mismatched"] + acc["rm", "corrupted"]) / 2

    # DPO on the SFT model's own answers ranked by "rm" (best vs worst of 4 per question), not on
    # the synthetic pairs: those differ in ways the SFT model never writes
    train_prompts = [c[0]["content"] for c in train_convs[:half]]
    ranked = rank_samples(sft, train_prompts[: args.dpo_pairs], [f"rm:{work / 'rm'}"], num_samples=4,
                          max_new_tokens=args.max_new_tokens, seed=args.seed, log=log)
    dpo_cfg = train_config(work / "dpo", None, 16, 3e-5, args.seed)
    dpo_cfg.epochs = args.dpo_epochs
    train_dpo(sft, ranked, dpo_cfg, beta=0.1, rpo_alpha=1.0, max_length=96, val_fraction=0.0, log=log)
    log(f"DPO done ({time.time() - t0:.0f} s)")
    # PPO and GRPO: "rm" plus a rule against repeated text, the hack both reward models fell for
    # (without it, "사랑 사랑 사랑 ..." scored above any real answer), at a learning rate and KL weight
    # that keep them near SFT
    rewards = [f"rm:{work / 'rm'}", f"{args.repeat_penalty}*python:{Path(__file__).resolve()}:no_repeats"]
    ppo_cfg = train_config(work / "ppo", args.ppo_minutes, 16, 2e-5, args.seed)
    ppo_cfg.weight_decay = 0.0
    train_ppo(sft, train_prompts, None, ppo_cfg, PPOConfig(mini_batch_size=8, ppo_epochs=2,
              max_new_tokens=args.max_new_tokens, kl_coef=0.05), rewards=rewards, log=log)
    log(f"PPO done ({time.time() - t0:.0f} s)")
    grpo_cfg = train_config(work / "grpo", args.grpo_minutes, 16, 2e-5, args.seed)
    grpo_cfg.weight_decay = 0.0
    train_grpo(sft, train_prompts, None, grpo_cfg, GRPOConfig(num_generations=8, beta=0.1,
               max_completion_length=args.max_new_tokens), rewards=rewards, log=log)
    log(f"GRPO done ({time.time() - t0:.0f} s)")

    prompts = [c[0]["content"] for c in test_convs]
    judge = f"rm:{work / 'judge_rm'}"
    report = compare_policies({"sft": sft, "dpo": work / "dpo", "ppo": work / "ppo", "grpo": work / "grpo"}, sft,
                              work / "rm", prompts, seed=args.seed, max_new_tokens=args.max_new_tokens, n_samples=4,
                              judges=[judge], samples_per_prompt=2)
    rows = report["policies"]
    sft_length = rows["sft"]["length"]
    print(f"reward model (trained against): held-out pairwise accuracy {acc['rm', 'mismatched']:.3f} mismatched, "
          f"{acc['rm', 'corrupted']:.3f} corrupted")
    print(f"judge reward model (other half of the questions): {acc['judge_rm', 'mismatched']:.3f} mismatched, "
          f"{acc['judge_rm', 'corrupted']:.3f} corrupted")
    print(f"{'policy':<8}{'RM reward':>11}{'judge RM':>10}{'win vs SFT':>12}{'KL to SFT':>11}{'tokens':>8}{'vs SFT':>8}"
          f"{'distinct2':>11}")
    for name, r in rows.items():
        print(f"{name:<8}{r['reward']:>11.3f}{r[f'judge/{judge}']:>10.3f}{r[f'win/{judge}']:>12.3f}{r['kl']:>11.3f}"
              f"{r['length']:>8.1f}{r['length'] / sft_length:>8.2f}{r['distinct2']:>11.3f}")
    for sample in report["samples"]:
        for name, answer in sample["answers"].items():
            print(f"  [{name}, greedy] {sample['prompt']} -> {answer}")
    print(f"({len(prompts)} held-out questions, {time.time() - t0:.0f} s in all)")
    print("RESULT rlhf_chatbot " + " ".join(
        [f"rm_acc={rm_acc:.3f}"] + [f"{n}_reward={r['reward']:.3f}" for n, r in rows.items()]
        + [f"{n}_win={rows[n][f'win/{judge}']:.3f}" for n in ("dpo", "ppo", "grpo")]
        + [f"{n}_kl={rows[n]['kl']:.3f}" for n in ("dpo", "ppo", "grpo")]
        + [f"{n}_length_ratio={rows[n]['length'] / sft_length:.2f}" for n in ("dpo", "ppo", "grpo")]))


if __name__ == "__main__":
    main()
