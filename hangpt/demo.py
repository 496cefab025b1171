"""`hangpt demo`: a small Korean ChatGPT built end to end, every stage of the course in one run.

tokenizer -> pretrain -> SFT chatbot -> preference pairs -> reward model -> DPO and PPO -> compare
the policies with the reward model -> report. Each stage writes an ordinary checkpoint folder under
`out`, so every other hangpt command (generate, chat, inspect, serve) works on it afterwards.
The default data is the embedded set written for this project (hangpt/demo_data); `--data-dir`
swaps in real files of the same formats.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from .errors import InputError

# Share of the time budget each training stage gets; the rest covers the tokenizer, the policy
# comparison and the report.
STAGE_SHARES = {"pretrain": 0.40, "sft": 0.22, "rm": 0.08, "dpo": 0.08, "ppo": 0.14}


@dataclass
class DemoData:
    text: list[Path]  # pretraining corpus
    qa: Path  # Q,A[,label] CSV: the chatbot's fine-tuning data
    prompts: Path | None = None  # held-out user prompts to compare the aligned policies on


@dataclass
class DemoResult:
    out: Path
    figures: dict = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    minutes: float = 0.0


def embedded_data() -> DemoData:
    root = Path(str(files("hangpt") / "demo_data"))
    return DemoData([root / "korean_text.txt"], root / "chatbot_qa.csv", root / "prompts.txt")


def copy_embedded_data(target: Path) -> list[Path]:
    """Copy the embedded data out, for people who want to read it or train on it themselves."""
    target.mkdir(parents=True, exist_ok=True)
    data = embedded_data()
    copied = []
    for src in (*data.text, data.qa, data.prompts, data.qa.parent / "README.md"):
        shutil.copyfile(src, target / src.name)
        copied.append(target / src.name)
    return copied


def find_data(data_dir: Path, qa: Path | None = None) -> DemoData:
    """Text files (.txt, .txt.gz) for pretraining, the CSV with Q and A columns (unless `qa` names
    one elsewhere), and prompts.txt."""
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: no such folder")
    if qa is None:
        found = [p for p in sorted(data_dir.rglob("*.csv")) if _has_qa_header(p)]
        if not found:
            raise InputError(f"{data_dir}: no CSV file with Q and A columns (ChatbotData format) in this folder; "
                             f"name one with --qa")
        qa = found[0]
    prompts = next(iter(sorted(data_dir.rglob("prompts.txt"))), None)
    text = [p for p in sorted(data_dir.rglob("*")) if p.name.endswith((".txt", ".txt.gz")) and p != prompts]
    if not text:
        raise InputError(f"{data_dir}: no .txt files to pretrain on")
    return DemoData(text, qa, prompts)


def _has_qa_header(path: Path) -> bool:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = [c.strip() for c in f.readline().split(",")]
    return "Q" in header and "A" in header


class Demo:
    """Runs the stages in order, collecting each stage's headline figure."""

    def __init__(self, out: Path, data: DemoData, minutes: float, seed: int = 1234, eval_prompts: int = 40, log=None):
        self.out, self.data, self.minutes, self.seed, self.eval_prompts = out, data, minutes, seed, eval_prompts
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.result = DemoResult(out)
        self.n_stages = 8
        self.stage_no = 0

    def _stage(self, name: str, what: str) -> None:
        self.stage_no += 1
        self.log(f"\n[{self.stage_no}/{self.n_stages}] {name}: {what}")

    def _train_config(self, stage: str, **overrides):
        from .train.loop import TrainConfig

        budget = self.minutes * STAGE_SHARES[stage]
        settings = dict(out=self.out / stage, time_budget=budget, seed=self.seed, eval_every=10**9,
                        save_every=10**9, log_every=5)
        settings.update(overrides)
        return TrainConfig(**settings)

    def run(self) -> DemoResult:
        start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        conversations = self._read_conversations()
        self.pretrain()
        self.sft(conversations)
        pairs = self.make_pairs(conversations)
        self.reward_model(pairs)
        self.dpo(pairs)
        self.ppo(conversations)
        self.compare()
        self.result.minutes = round((time.perf_counter() - start) / 60, 2)
        self.write_report()
        return self.result

    def _read_conversations(self) -> list[list[dict]]:
        from .data.conversations import read_conversations

        return read_conversations(self.data.qa)

    # -- stages --------------------------------------------------------------------------------
    def pretrain(self) -> None:
        from .train.pretrain import pretrain

        self._stage("pretrain", f"tokenizer + tiny GPT on {', '.join(p.name for p in self.data.text)}")
        cfg = self._train_config("pretrain", batch_size=16, lr=1e-3, log_every=10)
        summary = pretrain([str(p) for p in self.data.text], cfg.out, cfg, preset="tiny", max_length=128,
                           val_fraction=0.05, overwrite=True)
        final = summary["final"]
        self.result.figures["tokenizer_bytes_per_token"] = summary.get("tokenizer", {}).get("held_out_bytes_per_token")
        self.result.figures["pretrain_val_bpb"] = final.get("val_bpb")
        self.result.figures["pretrain_val_loss"] = final.get("val_loss")
        self.result.figures["pretrain_steps"] = summary["steps"]
        self.log(f"  validation bits per byte {final.get('val_bpb')}, {summary['steps']} steps, "
                 f"{summary['tokens']:,} tokens")

    def sft(self, conversations) -> None:
        from .train.sft import run_sft

        self._stage("sft", f"chatbot fine-tuning on {len(conversations)} Q/A pairs ({self.data.qa.name})")
        # a few hundred pairs: past ~6 epochs the validation answer loss rises again (memorising)
        cfg = self._train_config("sft", batch_size=16, lr=5e-4, epochs=6)
        summary = run_sft(self.out / "pretrain", conversations, cfg, template_name="default", max_length=128,
                          val_fraction=0.1, log=self.log)
        self.result.figures["sft_val_answer_loss"] = summary["final"].get("val_loss")
        self.log(f"  validation answer loss {summary['final'].get('val_loss')}")

    def make_pairs(self, conversations):
        from .data.preferences import make_pairs

        self._stage("pairs", "preference pairs: chosen = the real answer, rejected = a mismatched or corrupted one")
        pairs = make_pairs(conversations, seed=self.seed)
        path = self.out / "preferences.jsonl"
        path.write_text("".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
        self.result.figures["preference_pairs"] = len(pairs)
        self.log(f"  {len(pairs)} pairs written to {path}")
        return pairs

    def reward_model(self, pairs) -> None:
        from .train.reward import train_reward_model

        self._stage("rm", "reward model (pairwise loss) on the preference pairs")
        # a few epochs at most: 400 pairs are memorised long before the budget runs out
        cfg = self._train_config("rm", batch_size=16, lr=3e-4, epochs=3)
        summary = train_reward_model(self.out / "sft", pairs, cfg, max_length=128, val_fraction=0.1, log=self.log)
        self.result.figures["rm_val_accuracy"] = summary["final"].get("val_accuracy")
        self.log(f"  held-out pairwise accuracy {summary['final'].get('val_accuracy')}")

    def dpo(self, pairs) -> None:
        from .train.dpo import train_dpo

        self._stage("dpo", "Direct Preference Optimization against the frozen SFT model")
        cfg = self._train_config("dpo", batch_size=16, lr=2e-4, epochs=2)
        summary = train_dpo(self.out / "sft", pairs, cfg, beta=0.1, max_length=128, val_fraction=0.1, log=self.log)
        final = summary["final"]
        self.result.figures["dpo_val_accuracy"] = final.get("val_rewards/accuracies")
        self.result.figures["dpo_val_logp_margin"] = final.get("val_logp_margin")
        self.log(f"  held-out preference accuracy {final.get('val_rewards/accuracies')}, "
                 f"chosen-minus-rejected log-prob margin {final.get('val_logp_margin')}")

    def ppo(self, conversations) -> None:
        from .train.ppo import PPOConfig, train_ppo

        self._stage("ppo", "PPO against the reward model with a KL penalty to the SFT model")
        prompts = [c[-2]["content"] for c in conversations]
        random.Random(self.seed).shuffle(prompts)
        cfg = self._train_config("ppo", batch_size=16, lr=2e-5, log_every=1)
        summary = train_ppo(self.out / "sft", prompts, None, cfg, PPOConfig(mini_batch_size=8, ppo_epochs=2,
                            max_new_tokens=24, kl_coef=0.1), reward_model=self.out / "rm", log=self.log)
        final = summary["final"]
        self.result.figures["ppo_train_reward"] = final.get("reward")
        self.result.figures["ppo_train_kl"] = final.get("kl")
        self.log(f"  last mean reward {final.get('reward')}, KL {final.get('kl')}")

    def compare(self) -> None:
        from .train.compare import compare_policies

        prompts = self._held_out_prompts()
        self._stage("compare", f"SFT vs DPO vs PPO on {len(prompts)} held-out prompts (reward model score, KL to SFT)")
        table = compare_policies({name: self.out / name for name in ("sft", "dpo", "ppo")}, self.out / "sft",
                                 self.out / "rm", prompts, seed=self.seed)
        for name, row in table["policies"].items():
            self.result.figures[f"{name}_heldout_reward"] = row["reward"]
            self.result.figures[f"{name}_heldout_kl"] = row["kl"]
            self.log(f"  {name}: mean reward {row['reward']:.3f}, KL to SFT {row['kl']:.3f}")
        self.result.samples = table["samples"][:8]

    def _held_out_prompts(self) -> list[str]:
        if self.data.prompts:
            from .data.preferences import read_prompts

            return [p for p in read_prompts(self.data.prompts) if isinstance(p, str)][: self.eval_prompts]
        return [c[-2]["content"] for c in self._read_conversations()[: self.eval_prompts]]

    # -- report --------------------------------------------------------------------------------
    def write_report(self) -> None:
        self._stage("report", "writing report.md")
        f = self.result.figures
        rows = [
            ("tokenizer", "held-out bytes per token", f.get("tokenizer_bytes_per_token")),
            ("pretrain", "validation bits per byte", f.get("pretrain_val_bpb")),
            ("sft", "validation answer loss (nats/token)", f.get("sft_val_answer_loss")),
            ("rm", "held-out pairwise accuracy", f.get("rm_val_accuracy")),
            ("dpo", "held-out preference accuracy", f.get("dpo_val_accuracy")),
            ("ppo", "mean reward / KL in the last step", f"{_fmt(f.get('ppo_train_reward'))} / {_fmt(f.get('ppo_train_kl'))}"),
        ]
        for name in ("sft", "dpo", "ppo"):
            rows.append((f"{name} policy", "held-out reward / KL to SFT",
                         f"{_fmt(f.get(f'{name}_heldout_reward'))} / {_fmt(f.get(f'{name}_heldout_kl'))}"))
        lines = [
            "# hangpt demo report", "",
            f"Wall time: {self.result.minutes} minutes (budget {self.minutes}). Data: "
            f"{', '.join(p.name for p in self.data.text)}; chat pairs {self.data.qa.name}.", "",
            "| stage | figure | value |", "|---|---|---|",
            *[f"| {a} | {b} | {_fmt(c)} |" for a, b, c in rows], "",
            "## Curves", "",
        ]
        for stage in ("pretrain", "sft", "rm", "dpo", "ppo"):
            for png in sorted((self.out / stage).glob("*.png")):
                lines.append(f"![{stage} {png.stem}]({stage}/{png.name})")
        if self.result.samples:
            lines += ["", "## Sample answers (greedy) to held-out prompts", "",
                      "| prompt | SFT | DPO | PPO |", "|---|---|---|---|"]
            for s in self.result.samples:
                cells = [s["prompt"], *(s["answers"].get(n, "") for n in ("sft", "dpo", "ppo"))]
                lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
        lines += ["", "Talk to the result: `hangpt chat --model " + str(self.out / "ppo") + "`"]
        (self.out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (self.out / "figures.json").write_text(json.dumps(self.result.figures, indent=2, ensure_ascii=False))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def clean_output(out: Path) -> None:
    """A new demo run replaces the stage folders of an earlier one."""
    for stage in ("pretrain", *STAGE_SHARES):
        shutil.rmtree(out / stage, ignore_errors=True)
