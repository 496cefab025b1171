"""RLHF on ChatbotData: SFT -> reward model -> DPO and PPO, measured on held-out questions.

Preferences are made from the Q/A pairs (chosen = the true answer, rejected = another question's
answer or a corrupted copy: `hangpt rm make-pairs`). Reported: the reward model's pairwise accuracy
on held-out pairs, and for the SFT, DPO and PPO policies the mean reward-model score of answers
sampled (temperature 1) for held-out questions, with the KL to the SFT policy estimated on those
samples (sum over answer tokens of log pi - log pi_sft).

    python benchmarks/rlhf_chatbot.py [--sft DIR] [--work /tmp/rlhf_chatbot] [--*-minutes N]

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


def train_config(out: Path, minutes: float, batch_size: int, lr: float, seed: int):
    from hangpt.train.loop import TrainConfig

    return TrainConfig(out=out, batch_size=batch_size, lr=lr, time_budget=minutes, eval_every=10**9,
                       save_every=10**9, log_every=20, progress=False, seed=seed)


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
    ap.add_argument("--rm-minutes", type=float, default=3)
    ap.add_argument("--dpo-minutes", type=float, default=3)
    ap.add_argument("--ppo-minutes", type=float, default=5)
    ap.add_argument("--dpo-pairs", type=int, default=4000,
                    help="Training pairs given to DPO (its reference log-probs are computed for all of them first).")
    ap.add_argument("--eval-prompts", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"{args.data}: not found (the benchmark needs ChatbotData.csv)")

    from hangpt.checkpoint import load_checkpoint
    from hangpt.data.conversations import read_conversations
    from hangpt.data.preferences import make_pairs
    from hangpt.train.compare import evaluate_policy, greedy_answers
    from hangpt.train.dpo import train_dpo
    from hangpt.train.ppo import PPOConfig, train_ppo
    from hangpt.train.rewards import reward_model_scorer
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

    train_pairs = make_pairs(train_convs, seed=args.seed)
    rm_cfg = train_config(work / "rm", args.rm_minutes, 16, 3e-4, args.seed)
    train_reward_model(sft, train_pairs, rm_cfg, max_length=96, val_fraction=0.0, log=log)
    rm, rm_tok, rm_template, _ = load_reward_model(work / "rm")
    acc = {}
    for mode in ("mismatched", "corrupted"):
        pairs = make_pairs(test_convs, seed=args.seed + 1, rejected=mode)
        acc[mode] = evaluate_pairs(rm, encode_pairs(pairs, rm_template, rm_tok, 96), rm_tok.pad_id)["val_accuracy"]
    rm_acc = (acc["mismatched"] + acc["corrupted"]) / 2
    log(f"reward model held-out pairwise accuracy: {acc} ({time.time() - t0:.0f} s)")

    train_dpo(sft, train_pairs[: args.dpo_pairs], train_config(work / "dpo", args.dpo_minutes, 16, 1e-4, args.seed), beta=0.1,
              max_length=96, val_fraction=0.0, log=log)
    log(f"DPO done ({time.time() - t0:.0f} s)")
    ppo_cfg = train_config(work / "ppo", args.ppo_minutes, 16, 5e-5, args.seed)
    ppo_cfg.weight_decay = 0.0
    train_prompts = [c[0]["content"] for c in train_convs]
    train_ppo(sft, train_prompts, None, ppo_cfg, PPOConfig(mini_batch_size=8, ppo_epochs=2,
              max_new_tokens=args.max_new_tokens, kl_coef=0.05), reward_model=work / "rm", log=log)
    log(f"PPO done ({time.time() - t0:.0f} s)")

    sft_ckpt = load_checkpoint(sft)
    sft_model = sft_ckpt.model
    score_fn = reward_model_scorer(work / "rm", sft_ckpt.tokenizer)
    prompts = [c[0]["content"] for c in test_convs]
    policies = {"sft": sft, "dpo": work / "dpo", "ppo": work / "ppo"}
    results = {name: evaluate_policy(path, sft_model, prompts, score_fn, args.max_new_tokens, args.seed)
               for name, path in policies.items()}

    print(f"reward model held-out pairwise accuracy: mismatched {acc['mismatched']:.3f}, corrupted {acc['corrupted']:.3f}")
    print(f"{'policy':<8}{'mean RM reward':>16}{'KL to SFT':>12}{'answer tokens':>15}")
    for name, r in results.items():
        print(f"{name:<8}{r['reward']:>16.3f}{r['kl']:>12.3f}{r['length']:>15.1f}")
    greedy = {name: greedy_answers(path, prompts[:4], args.max_new_tokens) for name, path in policies.items()}
    for i, prompt in enumerate(prompts[:4]):
        for name in policies:
            print(f"  [{name}, greedy] {prompt} -> {greedy[name][i]}")
    print(f"({len(prompts)} held-out questions, {time.time() - t0:.0f} s in all)")
    print(f"RESULT rlhf_chatbot rm_acc={rm_acc:.3f} sft_reward={results['sft']['reward']:.3f} "
          f"dpo_reward={results['dpo']['reward']:.3f} ppo_reward={results['ppo']['reward']:.3f} "
          f"dpo_kl={results['dpo']['kl']:.3f} ppo_kl={results['ppo']['kl']:.3f}")


if __name__ == "__main__":
    main()
