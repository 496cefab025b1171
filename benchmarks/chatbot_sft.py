"""ChatbotData SFT: does pretraining on Korean text help a chatbot? The same SFT run (90/10 split,
fixed seed, KoGPT2 `<usr>question<sys>answer</s>` template) from the pretrained tiny model and from a
random init of the same shape; validation answer-token loss of both, and greedy answers of both to
10 held-out questions.

    python benchmarks/chatbot_sft.py --model /tmp/pt_ko --epochs 2   # or --max-steps N

Last line: RESULT chatbot_sft pretrained_val_loss=... random_val_loss=... ratio=... (random / pretrained).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from hangpt.checkpoint import load_checkpoint, save_checkpoint
from hangpt.data.conversations import read_conversations
from hangpt.engine import Engine, GenerationConfig
from hangpt.models import GPT
from hangpt.templates import template_for
from hangpt.train.loop import TrainConfig
from hangpt.train.sft import holdout_split, train_sft

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chatbot_data" / "ChatbotData.csv"


def answers(model_dir: Path, questions: list[str], max_new_tokens: int = 32) -> list[str]:
    ckpt = load_checkpoint(model_dir)
    template = template_for(ckpt.meta)
    engine = Engine(ckpt.model, ckpt.tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop=template.stop_strings(ckpt.tokenizer.eos_token))
    prompts = [template.encode_prompt(ckpt.tokenizer, [{"role": "user", "content": q}]) for q in questions]
    return [c[0].text.strip() for c in engine.generate(prompts, config)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="/tmp/pt_ko", help="pretrained checkpoint")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--out-dir", default="/tmp/chatbot_sft")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max-steps", type=int, default=None, help="instead of --epochs (a busy CPU)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args()

    out = Path(args.out_dir)
    conversations = read_conversations(args.data)
    base = load_checkpoint(args.model)
    torch.manual_seed(args.seed)
    save_checkpoint(out / "random_init", GPT(base.model.config), base.tokenizer, {"stage": "random-init"})

    results = {}
    for name, start in (("pretrained", Path(args.model)), ("random", out / "random_init")):
        cfg = TrainConfig(out=out / f"sft_{name}", batch_size=args.batch_size, lr=args.lr, epochs=args.epochs,
                          max_steps=args.max_steps,
                          seed=args.seed, eval_every=200, save_every=10_000, log_every=20)
        t0 = time.perf_counter()
        summary = train_sft(start, conversations, cfg, template_name="kogpt2", val_fraction=0.1,
                          log=lambda m: print(m, file=sys.stderr))
        results[name] = (summary, time.perf_counter() - t0)
        print(f"{name}: val answer loss {summary['final']['val_loss']:.4f} after {summary['steps']} steps "
              f"({results[name][1] / 60:.1f} min)", file=sys.stderr)

    _, held_out = holdout_split(conversations, 0.1, args.seed)
    questions = [c[0]["content"] for c in held_out[:10]]
    reference = [c[1]["content"] for c in held_out[:10]]
    pre = answers(out / "sft_pretrained", questions)
    rnd = answers(out / "sft_random", questions)

    print("| start | SFT steps | validation answer loss | train minutes |")
    print("|---|---|---|---|")
    for name, (summary, seconds) in results.items():
        print(f"| {name} | {summary['steps']} | {summary['final']['val_loss']:.4f} | {seconds / 60:.1f} |")
    print()
    print("| held-out question | reference | SFT from pretrained | SFT from random init |")
    print("|---|---|---|---|")
    for row in zip(questions, reference, pre, rnd):
        print("| " + " | ".join(x.replace("|", "/") for x in row) + " |")
    pre_loss = results["pretrained"][0]["final"]["val_loss"]
    rnd_loss = results["random"][0]["final"]["val_loss"]
    print(f"RESULT chatbot_sft pretrained_val_loss={pre_loss:.4f} random_val_loss={rnd_loss:.4f} "
          f"ratio={rnd_loss / pre_loss:.3f}")


if __name__ == "__main__":
    main()
