"""`hangpt demo`: a small Korean ChatGPT built end to end, every stage of the course in one run.

tokenizer -> pretrain -> SFT chatbot -> preference pairs -> reward model -> DPO and PPO -> compare
the policies with the reward model -> report. Each stage writes an ordinary checkpoint folder under
`out`, so every other hangpt command (generate, chat, inspect, serve) works on it afterwards.
The default data is the embedded set written for this project (hangpt/demo_data); `--data-dir`
swaps in real files of the same formats.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from .errors import InputError

# The work each stage does, in optimizer steps (batches of 16): what the embedded data needs for
# the quality floor (distinct, on-topic answers to the held-out prompts), whatever the machine's
# load. Epoch counts are turned into steps once the data size is known. With --base the model is
# already pretrained: fewer epochs, and no pretraining.
RECIPE = {"pretrain": {"steps": 200}, "sft": {"epochs": 6}, "rm": {"epochs": 3}, "dpo": {"epochs": 2},
          "ppo": {"steps": 40}}
# the pretrained model: the Llama layout at the tiny preset's widths, with a vocabulary sized to
# the ~100 KB of text (a 4096-token BPE; the preset's 8192 would stop near 4300 tokens anyway)
PRETRAIN_ARCH = "llama"
PRETRAIN_VOCAB = 4096
BASE_RECIPE = {"sft": {"epochs": 2}, "rm": {"epochs": 1}, "dpo": {"epochs": 1}, "ppo": {"steps": 8}}
# Time of one step of each stage, and of its fixed work (loading, the tokenizer, DPO's reference
# log-probs), in pretraining steps of the tiny model (batch 16 x 128 tokens), measured on a 2-core
# machine; used to print the expected time of each stage up front.
STEP_COST = {"pretrain": 1.1, "sft": 0.15, "rm": 0.23, "dpo": 0.24, "ppo": 0.95}
STAGE_SETUP = {"pretrain": 8, "sft": 4, "rm": 4, "dpo": 6, "ppo": 4}
FIXED_STEPS = 34  # the step-time probe, preference pairs, policy comparison, report
BATCH = 16
SFT_VAL_FRACTION = 0.1
# Answers sampled per held-out prompt for the policies' mean reward and KL: with one, sampling noise
# (about +-0.3 in reward over 40 prompts) is as large as what DPO and PPO change.
HELD_OUT_SAMPLES = 8
# The report calls the chatbot degenerate below these shares of the held-out prompts.
MIN_DISTINCT, MIN_ON_TOPIC = 0.75, 0.5
STAGES = ("pretrain", "sft", "rm", "dpo", "ppo")


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


def measure_step_seconds(model=None, repeats: int = 2) -> float:
    """Seconds of one training step (batch 16 x 128 tokens) of `model` (fine-tuned with AdamW), by
    default of the demo's fresh tiny GPT with pretraining's optimizer, on this machine now, with
    the faster of all threads and one fewer (as training will choose, see hangpt/threads.py): the
    unit the expected times are printed in."""
    import torch
    import torch.nn.functional as F

    from .models import build_model, preset_config
    from .train.loop import TrainConfig, make_optimizer
    from .train.pretrain import RECIPE as PRETRAINING_RECIPE

    optimizer_name = "adamw" if model else PRETRAINING_RECIPE["optimizer"]
    model = model or build_model(preset_config("tiny", PRETRAIN_ARCH, vocab_size=PRETRAIN_VOCAB))
    length = min(129, model.config.context_length)
    x = torch.randint(0, model.config.vocab_size, (BATCH, length))
    optimizer = make_optimizer(model, TrainConfig(out=None, lr=0.0, optimizer=optimizer_name))  # lr 0: no change
    threads = torch.get_num_threads()
    best = float("inf")
    for n in [threads, threads - 1, threads][: 3 if threads > 1 else 1]:  # the first round warms up
        torch.set_num_threads(n)
        for _ in range(repeats):
            t0 = time.perf_counter()
            logits = model(x[:, :-1]).logits
            F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return best


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


class Demo:
    """Runs the stages in order, collecting each stage's headline figure.

    The work of every stage is a number of steps (RECIPE x `work`), so the result does not depend
    on how busy the machine is; `minutes`, when given, scales the steps down to fit and the report
    then says which stages got less training than the recipe. `base` (a checkpoint folder or hub
    id) skips pretraining and fine-tunes that model instead.
    """

    def __init__(self, out: Path, data: DemoData, minutes: float | None = None, seed: int = 1234,
                 eval_prompts: int = 40, log=None, work: float = 1.0, base: str | None = None,
                 progress: bool = True):
        self.out, self.data, self.minutes, self.seed, self.eval_prompts = out, data, minutes, seed, eval_prompts
        self.work, self.base, self.progress = work, base, progress
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.result = DemoResult(out)
        self.stages = tuple(s for s in STAGES if not (base and s == "pretrain"))
        self.n_stages = len(self.stages) + 3  # + pairs, compare, report
        self.stage_no = 0
        self.steps: dict[str, int] = {}  # planned steps per stage
        self.needed: dict[str, int] = {}  # steps the recipe asks for
        self.step_seconds = 0.0

    @property
    def start_model(self) -> Path | str:
        return self.base or self.out / "pretrain"

    def _stage(self, name: str, what: str) -> None:
        self.stage_no += 1
        line = f"\n[{self.stage_no}/{self.n_stages}] {name}: {what}"
        if name in self.steps:
            eta = time.strftime("%H:%M", time.localtime(time.time() + self._expected(name)))
            line += f"\n  {self.steps[name]} steps, about {_minutes(self._expected(name))} (done by ~{eta})"
        self.log(line)
        self._stage_start = time.perf_counter()

    def _stage_done(self) -> None:
        self.log(f"  took {_minutes(time.perf_counter() - self._stage_start)}")

    def _expected(self, stage: str) -> float:
        return (self.steps[stage] * STEP_COST[stage] + STAGE_SETUP[stage]) * self.step_seconds

    def _train_config(self, stage: str, **overrides):
        from .train.loop import TrainConfig

        settings = dict(out=self.out / stage, max_steps=self.steps[stage], seed=self.seed, eval_every=10**9,
                        save_every=10**9, log_every=5, batch_size=BATCH, progress=self.progress)
        settings.update(overrides)
        return TrainConfig(**settings)

    def plan(self, conversations, n_pairs: int) -> None:
        """Steps per stage from the recipe and the data size; the expected time from a measured
        step. With a minutes budget, every stage is scaled down alike to fit it."""
        recipe = BASE_RECIPE if self.base else RECIPE
        sizes = {"sft": len(conversations), "rm": n_pairs, "dpo": len(conversations)}  # dpo: one pair per question at most
        for stage in self.stages:
            r = recipe[stage]
            steps = r.get("steps") or math.ceil(r["epochs"] * math.ceil(sizes[stage] * 0.9) / BATCH)
            self.needed[stage] = max(1, round(steps * self.work))
        model = None
        if self.base:
            from .checkpoint import load_checkpoint

            model = load_checkpoint(self.base).model
        self.step_seconds = measure_step_seconds(model)
        self.steps = dict(self.needed)
        fixed = (FIXED_STEPS + sum(STAGE_SETUP[s] for s in self.stages)) * self.step_seconds
        full = sum(self._expected(s) for s in self.stages) + FIXED_STEPS * self.step_seconds
        if self.minutes and full > self.minutes * 60:
            scale = max(0.0, self.minutes * 60 - fixed) / (full - fixed)
            self.steps = {s: max(1, int(n * scale)) for s, n in self.needed.items()}
        expected = sum(self._expected(s) for s in self.stages) + FIXED_STEPS * self.step_seconds
        self.result.figures["expected_minutes"] = round(expected / 60, 1)
        self.result.figures["full_recipe_minutes"] = round(full / 60, 1)
        self.log(f"plan: {', '.join(f'{s} {n} steps' for s, n in self.steps.items())}; "
                 f"expected about {_minutes(expected)} on this machine now "
                 f"(one pretraining step measured at {self.step_seconds:.2f} s)")
        for warning in self.short_stages():
            self.log(f"warning: {warning}")

    def short_stages(self) -> list[str]:
        """One line per stage that gets fewer steps than the recipe, with the command that fixes it."""
        short = [f"{s} {self.steps[s]} of {n} steps" for s, n in self.needed.items() if self.steps.get(s, n) < n]
        if not short:
            return []
        return [f"less training than the demo's quality needs ({', '.join(short)}) because of --minutes "
                f"{self.minutes}; for the full run (about {self.result.figures['full_recipe_minutes']} min here) "
                f"use: {self.command(minutes=None)}"]

    def command(self, **changes) -> str:
        """The `hangpt demo` command of this run with some options changed."""
        opts = {"minutes": self.minutes, "work": self.work if self.work != 1 else None, "base": self.base,
                "out": str(self.out), **changes}
        return "hangpt demo " + " ".join(f"--{k} {v}" for k, v in opts.items() if v is not None)

    def run(self) -> DemoResult:
        start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        from .data.preferences import make_pairs

        conversations = self._read_conversations()
        pairs = make_pairs(conversations, seed=self.seed)
        self.plan(conversations, len(pairs))
        if not self.base:
            self.pretrain(conversations)
        self.sft(conversations)
        self.write_pairs(pairs)
        self.reward_model(pairs)
        self.dpo(conversations, pairs)
        self.ppo(conversations)
        self.compare()
        self.result.minutes = round((time.perf_counter() - start) / 60, 2)
        self.write_report()
        return self.result

    def _read_conversations(self) -> list[list[dict]]:
        from .data.conversations import read_conversations

        return read_conversations(self.data.qa)

    # -- stages --------------------------------------------------------------------------------
    def pretrain(self, conversations) -> None:
        """The tiny GPT learns Korean from the text files and from the chat pairs SFT will train on
        (their questions and answers as plain text: in-domain text, the way a chatbot's base is
        continued on its domain); SFT's validation pairs stay unseen."""
        from .train.pretrain import RECIPE as PRETRAINING_RECIPE
        from .train.pretrain import pretrain
        from .train.sft import holdout_split

        self._stage("pretrain", f"tokenizer + tiny GPT on {', '.join(p.name for p in self.data.text)} "
                                f"and the chat pairs' text")
        chat_text = self.out / "chat_text.txt"
        train, _ = holdout_split(conversations, SFT_VAL_FRACTION, self.seed)
        chat_text.write_text("".join(" ".join(m["content"] for m in c) + "\n" for c in train), encoding="utf-8")
        # `hangpt pretrain`'s own recipe: the Llama layout, Muon, linear decay, the default lr (None)
        cfg = self._train_config("pretrain", log_every=10, lr=None, **PRETRAINING_RECIPE)
        summary = pretrain([*map(str, self.data.text), str(chat_text)], cfg.out, cfg, preset="tiny", arch=PRETRAIN_ARCH,
                           vocab_size=PRETRAIN_VOCAB, max_length=128, val_fraction=0.05, overwrite=True)
        final = summary["final"]
        self.result.figures["tokenizer_bytes_per_token"] = summary.get("tokenizer", {}).get("held_out_bytes_per_token")
        self.result.figures["pretrain_val_bpb"] = final.get("val_bpb")
        self.result.figures["pretrain_val_loss"] = final.get("val_loss")
        self.result.figures["pretrain_steps"] = summary["steps"]
        self.log(f"  validation bits per byte {_fmt(final.get('val_bpb'))}, {summary['steps']} steps, "
                 f"{summary['tokens']:,} tokens")
        self._stage_done()

    def sft(self, conversations) -> None:
        from .train.sft import train_sft

        self._stage("sft", f"chatbot fine-tuning on {len(conversations)} Q/A pairs ({self.data.qa.name})")
        # a few hundred pairs: past ~6 epochs the validation answer loss rises again (memorising)
        cfg = self._train_config("sft", lr=5e-5 if self.base else 5e-4)
        summary = train_sft(self.start_model, conversations, cfg, template_name="default", max_length=128,
                          val_fraction=SFT_VAL_FRACTION, log=self.log)
        self.result.figures["sft_val_answer_loss"] = summary["final"].get("val_loss")
        self.result.figures["sft_steps"] = summary["steps"]
        self.log(f"  validation answer loss {_fmt(summary['final'].get('val_loss'))} nats/token")
        self._stage_done()

    def write_pairs(self, pairs) -> None:
        self._stage("pairs", "preference pairs: chosen = the real answer, rejected = a mismatched or corrupted one")
        self._write_jsonl(self.out / "preferences.jsonl", pairs)
        self.result.figures["preference_pairs"] = len(pairs)

    def _write_jsonl(self, path: Path, pairs) -> None:
        from .data.preferences import preferences_jsonl

        path.write_text(preferences_jsonl(pairs), encoding="utf-8")
        self.log(f"  {len(pairs)} pairs written to {path}")

    @staticmethod
    def _training_prompts(conversations) -> list[str]:
        """The questions of the chat pairs: what PPO samples for and DPO's answers are ranked on."""
        return [c[-2]["content"] for c in conversations]

    def reward_model(self, pairs) -> None:
        from .train.reward import train_reward_model

        self._stage("rm", "reward model (pairwise loss) on the preference pairs")
        # a few epochs at most: 400 pairs are memorised long before the budget runs out
        cfg = self._train_config("rm", lr=3e-5 if self.base else 3e-4)
        summary = train_reward_model(self.out / "sft", pairs, cfg, max_length=128, val_fraction=0.1, log=self.log)
        self.result.figures["rm_val_accuracy"] = summary["final"].get("val_accuracy")
        self.result.figures["rm_steps"] = summary["steps"]
        self.log(f"  held-out pairwise accuracy {_fmt(summary['final'].get('val_accuracy'))}")
        self._stage_done()

    def dpo(self, conversations, synthetic_pairs) -> None:
        from .train.dpo import train_dpo
        from .train.ranked_pairs import rank_samples

        self._stage("dpo", "DPO on the SFT model's own answers: 4 sampled per training question, the reward "
                           "model's best against its worst")
        # pairs of answers the SFT model really writes: DPO on the synthetic pairs (real answer vs
        # another question's) pushes down answers it never gives and lowered the held-out reward
        prompts = self._training_prompts(conversations)
        prompts = prompts[: math.ceil(self.steps["dpo"] * BATCH / (1 - SFT_VAL_FRACTION))]  # no more than DPO can use
        pairs = rank_samples(self.out / "sft", prompts, [f"rm:{self.out / 'rm'}"], num_samples=4, max_new_tokens=24,
                             seed=self.seed, log=self.log)
        self._write_jsonl(self.out / "ranked_pairs.jsonl", pairs)
        self.result.figures["ranked_pairs"] = len(pairs)
        if not pairs:  # an SFT model trained a few steps rarely ends an answer
            self.log("  warning: no ranked pairs (the SFT model's answers did not end, or scored alike), so DPO trains "
                     "on the synthetic pairs")
            pairs = synthetic_pairs
        # the RPO term (DPO + the chosen answers' cross-entropy) keeps the small model close to
        # answers it wrote; plain DPO drifts further from SFT (KL ~5 vs ~0.3 here) for a similar reward
        cfg = self._train_config("dpo", lr=2e-5 if self.base else 3e-5)
        summary = train_dpo(self.out / "sft", pairs, cfg, beta=0.1, rpo_alpha=1.0, max_length=128, val_fraction=0.1,
                            log=self.log)
        final = summary["final"]
        self.result.figures["dpo_val_accuracy"] = final.get("val_rewards/accuracies")
        self.result.figures["dpo_val_logp_margin"] = final.get("val_logp_margin")
        self.result.figures["dpo_steps"] = summary["steps"]
        self.log(f"  held-out preference accuracy {_fmt(final.get('val_rewards/accuracies'))}, "
                 f"chosen-minus-rejected log-prob margin {_fmt(final.get('val_logp_margin'))}")
        self._stage_done()

    def ppo(self, conversations) -> None:
        from .train.ppo import PPOConfig, train_ppo

        self._stage("ppo", "PPO against the reward model with a KL penalty to the SFT model")
        prompts = self._training_prompts(conversations)
        random.Random(self.seed).shuffle(prompts)
        cfg = self._train_config("ppo", lr=2e-6 if self.base else 2e-5, log_every=1)
        summary = train_ppo(self.out / "sft", prompts, None, cfg, PPOConfig(mini_batch_size=8, ppo_epochs=2,
                            max_new_tokens=24, kl_coef=0.1), reward_model=self.out / "rm", log=self.log)
        final = summary["final"]
        self.result.figures["ppo_train_reward"] = final.get("reward")
        self.result.figures["ppo_train_kl"] = final.get("kl")
        self.result.figures["ppo_steps"] = summary["steps"]
        self.log(f"  last mean reward {_fmt(final.get('reward'))}, KL {_fmt(final.get('kl'))}")
        self._stage_done()

    def compare(self) -> None:
        from .train.compare import compare_policies

        prompts = self._held_out_prompts()
        self._stage("compare", f"SFT vs DPO vs PPO on {len(prompts)} held-out prompts, {HELD_OUT_SAMPLES} sampled answers "
                               f"each (reward model score, KL to SFT)")
        table = compare_policies({name: self.out / name for name in ("sft", "dpo", "ppo")}, self.out / "sft",
                                 self.out / "rm", prompts, seed=self.seed, n_samples=len(prompts),
                                 samples_per_prompt=HELD_OUT_SAMPLES)
        for name, row in table["policies"].items():
            self.result.figures[f"{name}_heldout_reward"] = row["reward"]
            self.result.figures[f"{name}_heldout_kl"] = row["kl"]
            self.log(f"  {name}: mean reward {row['reward']:.2f}, KL to SFT {row['kl']:.2f}")
        self.result.samples = table["samples"]
        self.assess(prompts)
        self._stage_done()

    def assess(self, prompts: list[str]) -> None:
        """Figures that tell a working chatbot from a degenerate one, per policy, from its greedy
        answers to the held-out prompts: how many distinct answers, how many with U+FFFD, and how
        many are on topic by the reward model (the answer scores higher after its own prompt
        than after the next prompt in the list, the mismatch the reward model was trained on)."""
        from .train.reward import load_reward_model, score_texts

        rm, tok, template, _ = load_reward_model(self.out / "rm")
        shifted = prompts[1:] + prompts[:1]
        for name in ("sft", "dpo", "ppo"):
            answers = [s["answers"][name] for s in self.result.samples]
            own = score_texts(rm, tok, template, prompts, answers, 128)
            other = score_texts(rm, tok, template, shifted, answers, 128)
            self.result.figures[f"{name}_distinct_answers"] = len(set(answers))
            self.result.figures[f"{name}_replacement_chars"] = sum("\ufffd" in a for a in answers)
            self.result.figures[f"{name}_on_topic"] = sum(a > b for a, b in zip(own, other))
        self.result.figures["heldout_prompts"] = len(prompts)
        for warning in self.degenerate():
            self.log(f"warning: {warning}")

    def degenerate(self) -> list[str]:
        """What is wrong with the answers of each policy, if anything, and what to do about it."""
        f, n = self.result.figures, self.result.figures.get("heldout_prompts", 0)
        problems = []
        for name in ("sft", "dpo", "ppo"):
            why = []
            if f.get(f"{name}_distinct_answers", n) < MIN_DISTINCT * n:
                why.append(f"only {f[f'{name}_distinct_answers']} distinct answers to {n} prompts")
            if f.get(f"{name}_replacement_chars"):
                why.append(f"{f[f'{name}_replacement_chars']} answers with the replacement character \ufffd")
            if f.get(f"{name}_on_topic", n) < MIN_ON_TOPIC * n:
                why.append(f"only {f[f'{name}_on_topic']} of {n} answers on topic")
            if why:
                problems.append(f"the {name} chatbot's answers are degenerate: {'; '.join(why)}")
        if problems:
            fix = self.command(minutes=None) if self.short_stages() else self.command(work=2 * self.work)
            problems.append(f"more training fixes this: {fix}")
        return problems

    def _held_out_prompts(self) -> list[str]:
        if self.data.prompts:
            from .data.preferences import read_prompts

            return [p for p in read_prompts(self.data.prompts) if isinstance(p, str)][: self.eval_prompts]
        return [c[-2]["content"] for c in self._read_conversations()[: self.eval_prompts]]

    # -- report --------------------------------------------------------------------------------
    def write_report(self) -> None:
        self._stage("report", "writing report.md")
        f = self.result.figures
        n = f.get("heldout_prompts", 0)
        rows = [
            ("tokenizer", "held-out bytes per token", f.get("tokenizer_bytes_per_token")),
            ("pretrain", "validation bits per byte", f.get("pretrain_val_bpb")),
            ("sft", "validation answer loss (nats/token)", f.get("sft_val_answer_loss")),
            ("rm", "held-out pairwise accuracy", f.get("rm_val_accuracy")),
            ("dpo", "pairs from the SFT model's ranked answers (0: the synthetic pairs were used)", f.get("ranked_pairs")),
            ("dpo", "held-out preference accuracy", f.get("dpo_val_accuracy")),
            ("ppo", "mean reward / KL in the last step", f"{_fmt(f.get('ppo_train_reward'))} / {_fmt(f.get('ppo_train_kl'))}"),
        ]
        for name in ("sft", "dpo", "ppo"):
            rows.append((f"{name} policy", f"held-out reward / KL to SFT ({HELD_OUT_SAMPLES} answers per prompt)",
                         f"{_fmt(f.get(f'{name}_heldout_reward'))} / {_fmt(f.get(f'{name}_heldout_kl'))}"))
            rows.append((f"{name} policy", f"greedy answers to {n} prompts: distinct / with \ufffd / on topic",
                         f"{f.get(f'{name}_distinct_answers')} / {f.get(f'{name}_replacement_chars')} / "
                         f"{f.get(f'{name}_on_topic')}"))
        steps = ", ".join(f"{s} {self.steps[s]}" + (f" of {self.needed[s]}" if self.steps[s] < self.needed[s] else "")
                          for s in self.steps)
        lines = ["# hangpt demo report", ""]
        problems = self.short_stages() + self.degenerate()
        if problems:
            lines += ["## Warning", "", *[f"- {p}" for p in problems], ""]
        lines += [
            f"Wall time: {self.result.minutes} minutes (expected {f.get('expected_minutes')}). Steps: {steps}. "
            f"Data: {', '.join(p.name for p in self.data.text)}; chat pairs {self.data.qa.name}"
            + (f"; base model {self.base}." if self.base else "."), "",
            "| stage | figure | value |", "|---|---|---|",
            *[f"| {a} | {b} | {_fmt(c)} |" for a, b, c in rows], "",
            f"On topic: the reward model scores the answer higher after its own prompt than after another "
            f"prompt. The report calls a policy degenerate below {MIN_DISTINCT:.0%} distinct answers or "
            f"{MIN_ON_TOPIC:.0%} on topic, or with any \ufffd.", "",
            "## Curves", "",
        ]
        for stage in self.stages:
            for png in sorted((self.out / stage).glob("*.png")):
                lines.append(f"![{stage} {png.stem}]({stage}/{png.name})")
        if self.result.samples:
            lines += ["", "## Greedy answers to the held-out prompts", "",
                      "| prompt | SFT | DPO | PPO |", "|---|---|---|---|"]
            for s in self.result.samples:
                cells = [s["prompt"], *(s["answers"].get(n, "") for n in ("sft", "dpo", "ppo"))]
                lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
        lines += ["", "Talk to the result: `hangpt chat --model " + str(self.out / "ppo") + "`"]
        (self.out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (self.out / "figures.json").write_text(json.dumps(self.result.figures, indent=2, ensure_ascii=False))
        (self.out / "answers.json").write_text(json.dumps(self.result.samples, indent=1, ensure_ascii=False))


def _fmt(v) -> str:
    """Figures as people read them: 3 significant digits."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def clean_output(out: Path) -> None:
    """A new demo run replaces the stage folders of an earlier one."""
    for stage in STAGES:
        shutil.rmtree(out / stage, ignore_errors=True)
