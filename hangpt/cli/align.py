"""`hangpt rm train|score|eval|make-pairs|rank-samples`, `hangpt dpo`, `hangpt ppo`, `hangpt grpo` and `hangpt compare`:
alignment with preferences and rewards."""

from __future__ import annotations

import click

from .options import (Number, device_option, log, lora_options, print_json, require_model, sampling_options, sampling_settings,
                      train_config, training_options)

_REWARD_HELP = ("A reward source (repeatable; weighted sources are summed): rm:DIR (a reward model), "
                "classifier:DIR:LABEL (a `hangpt classify` model's probability of LABEL for the answer), "
                "python:FILE:FUNCTION (FUNCTION(prompt, completion) -> float); prefix WEIGHT* to weigh one, "
                "e.g. 0.5*python:rules.py:polite.")
_PROMPTS_HELP = "Prompts: JSONL/JSON array of {prompt} or plain text, one per line."

_PREFS_HELP = ("Preference file: JSONL/JSON array of {prompt, chosen, rejected[, margin]} or KoChatGPT's "
               "{prompt, completion_0.., ranking} (lower rank = better).")


@click.group()
def rm():
    """Train a reward model on ranked answers; score answers."""


@rm.command("train")
@click.option("--model", default=None, help="SFT checkpoint to start from (its chat template renders the prompts).")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help=_PREFS_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the reward model to.")
@training_options
@lora_options
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON.")
def rm_train(model, data, out, as_json, **opts):
    """Train a reward model: GPT + scalar head, loss -log sigmoid(r_chosen - r_rejected [- margin]).

    Defaults: 1 epoch, batch 8, lr 1e-4, 10% of the pairs held out for pairwise accuracy."""
    from ..data.preferences import read_preferences
    from ..train.reward import train_reward_model

    require_model(model, opts["resume"])
    pairs = read_preferences(data)
    log(f"{len(pairs)} preference pairs from {data}{pairs.skipped_note()}")
    cfg = train_config(out, opts, batch_size=8, lr=1e-4, default_epochs=1)
    val_fraction = 0.1 if opts["val_fraction"] is None else opts["val_fraction"]
    summary = train_reward_model(model, pairs, cfg, max_length=opts["max_length"], val_fraction=val_fraction, log=log)
    if as_json:
        print_json({"out": out, **summary})
    else:
        final = summary["final"]
        acc = f", held-out pairwise accuracy {final['val_accuracy']:.3f}" if "val_accuracy" in final else ""
        click.echo(f"reward model written to {out}: {summary['steps']} steps, train loss {final.get('loss', float('nan')):.4f}{acc}")


@rm.command("score")
@click.option("--model", required=True, help="Reward model folder (from `hangpt rm train`).")
@click.option("--prompt", required=True, help="The user's message.")
@click.option("--response", "responses", multiple=True, required=True, help="An answer to score (repeatable).")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the rewards as JSON.")
def rm_score(model, prompt, responses, device, as_json):
    """Print the reward of each --response to --prompt (higher = preferred) and, with two or more,
    the probability that the first beats the second: sigmoid(r1 - r2), the Bradley-Terry model the
    reward model was trained under."""
    import math

    from ..train.reward import load_reward_model, score_texts

    rm_model, tokenizer, template, _ = load_reward_model(model)
    rewards = score_texts(rm_model.to(device), tokenizer, template, [prompt] * len(responses), list(responses))
    p_first = 0.5 * (1 + math.tanh((rewards[0] - rewards[1]) / 2)) if len(rewards) > 1 else None  # sigmoid
    if as_json:
        print_json({"prompt": prompt, "rewards": [{"response": r, "reward": round(s, 6)} for r, s in zip(responses, rewards)],
                    **({"p_first_beats_second": round(p_first, 6)} if p_first is not None else {})})
    else:
        for r, s in zip(responses, rewards):
            click.echo(f"{s:+.4f}  {r}")
        if p_first is not None:
            click.echo(f"P(first beats second) = sigmoid({rewards[0]:+.4f} - {rewards[1]:+.4f}) = {p_first:.4f}")


@rm.command("eval")
@click.option("--model", required=True, help="Reward model folder.")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help=_PREFS_HELP)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def rm_eval(model, data, batch_size, device, as_json):
    """Pairwise accuracy (chosen scored above rejected), loss and mean margin on a preference file."""
    from ..data.preferences import read_preferences
    from ..train.reward import encode_pairs, evaluate_pairs, load_reward_model

    rm_model, tokenizer, template, _ = load_reward_model(model)
    rm_model.to(device)
    pairs = read_preferences(data)
    log(f"{len(pairs)} preference pairs from {data}{pairs.skipped_note()}")
    examples = encode_pairs(pairs, template, tokenizer, rm_model.gpt.config.context_length)
    metrics = {k.removeprefix("val_"): v for k, v in evaluate_pairs(rm_model, examples, tokenizer.pad_id, batch_size).items()}
    metrics["pairs"] = len(pairs)
    if as_json:
        print_json(metrics)
    else:
        click.echo(f"{len(pairs)} pairs: accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, "
                   f"mean margin {metrics['margin']:+.4f}")


@rm.command("make-pairs")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Q/A data (ChatbotData CSV, prompt/completion or messages JSON(L)).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Preference JSONL file to write.")
@click.option("--rejected", type=click.Choice(["mixed", "mismatched", "corrupted"]), default="mixed", show_default=True,
              help="Rejected answer: another question's answer, a corrupted copy (shuffled, cut, a word repeated, "
                   "another answer appended), or either.")
@click.option("--question-column", default="Q", show_default=True, help="CSV/TSV column with the question.")
@click.option("--answer-column", default="A", show_default=True, help="CSV/TSV column with the answer.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON.")
def make_pairs_cmd(data, out, rejected, question_column, answer_column, seed, as_json):
    """Make preference pairs from Q/A data when no human labels exist (chosen = the real answer)."""
    from ..data.conversations import read_conversations
    from ..data.preferences import make_pairs

    conversations = read_conversations(data, question_column=question_column, answer_column=answer_column)
    pairs = make_pairs(conversations, seed=seed, rejected=rejected)
    _write_pairs(out, pairs)
    if as_json:
        print_json({"out": out, "pairs": len(pairs)})
    else:
        click.echo(f"{len(pairs)} preference pairs written to {out}")


@rm.command("rank-samples")
@click.option("--model", required=True, help="The policy whose answers are sampled (e.g. the SFT model DPO will start from).")
@click.option("--reward-model", default=None, help="Reward model folder; same as --reward rm:DIR.")
@click.option("--reward", "rewards", multiple=True, help=_REWARD_HELP)
@click.option("--prompts", required=True, type=click.Path(dir_okay=False), help=_PROMPTS_HELP)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Preference JSONL file to write.")
@click.option("--num-samples", type=click.IntRange(min=2), default=4, show_default=True, help="Answers sampled per prompt.")
@sampling_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Prompts sampled at once.")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON.")
def rank_samples_cmd(model, reward_model, rewards, prompts, out, num_samples, seed, batch_size, device, as_json, **opts):
    """Preference pairs from the model's own answers: sample --num-samples answers to each prompt,
    score them with the reward, write the best finished answer as chosen and the worst as rejected.
    DPO on these pairs (`hangpt dpo --data OUT`) raises what the reward prefers among answers the
    model really writes, as online DPO does. Sampling: temperature 1, at most 64 new tokens unless given."""
    from ..data.preferences import read_prompts
    from ..errors import InputError
    from ..train.ranked_pairs import rank_samples

    specs = _reward_specs(reward_model, rewards)
    sampling = sampling_settings(opts)
    prompt_list = read_prompts(prompts)
    log(f"{len(prompt_list)} prompts from {prompts}{prompt_list.skipped_note('prompts')}")
    pairs = rank_samples(model, list(prompt_list), specs, num_samples, sampling.pop("max_new_tokens", 64),
                         sampling.pop("temperature", 1.0), sampling, seed, batch_size, device, log=log)
    if not pairs:
        raise InputError(f"{prompts}: no pairs: no sampled answer ended, or all answers to each prompt scored alike "
                         f"(try more --max-new-tokens or --num-samples)")
    _write_pairs(out, pairs)
    if as_json:
        print_json({"out": out, "pairs": len(pairs), "prompts": len(prompt_list)})
    else:
        click.echo(f"{len(pairs)} preference pairs from {len(prompt_list)} prompts written to {out}")


def _write_pairs(out, pairs) -> None:
    """Preference pairs as TRL-shaped JSON lines, written atomically."""
    from pathlib import Path

    from ..checkpoint import write_file_atomic
    from ..data.preferences import preferences_jsonl

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(out, preferences_jsonl(pairs).encode("utf-8"))


@click.command()
@click.option("--model", default=None, help="SFT checkpoint to align (also the frozen reference).")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help=_PREFS_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the aligned model to.")
@click.option("--beta", type=Number(min=0, min_open=True), default=0.1, show_default=True,
              help="Strength of the pull towards the reference (higher = stay closer).")
@click.option("--rpo-alpha", type=Number(min=0), default=0.0, show_default=True,
              help="Add this times the chosen answers' cross-entropy to the loss (TRL's RPO), so the "
                   "model keeps writing the chosen answers instead of drifting away from both.")
@training_options
@lora_options
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON.")
def dpo(model, data, out, beta, rpo_alpha, as_json, **opts):
    """Direct Preference Optimization against the starting model (sigmoid loss, answer-only log-probs).

    Defaults: 1 epoch, batch 8, lr 5e-5, 10% held out; logs rewards/chosen, rewards/rejected,
    rewards/margins and rewards/accuracies as TRL does."""
    from ..data.preferences import read_preferences
    from ..train.dpo import train_dpo

    require_model(model, opts["resume"])
    pairs = read_preferences(data)
    log(f"{len(pairs)} preference pairs from {data}{pairs.skipped_note()}")
    cfg = train_config(out, opts, batch_size=8, lr=5e-5, default_epochs=1)
    val_fraction = 0.1 if opts["val_fraction"] is None else opts["val_fraction"]
    summary = train_dpo(model, pairs, cfg, beta=beta, rpo_alpha=rpo_alpha, max_length=opts["max_length"],
                        val_fraction=val_fraction, log=log)
    if as_json:
        print_json({"out": out, **summary})
    else:
        final = summary["final"]
        acc = (f", held-out reward accuracy {final['val_rewards/accuracies']:.3f}, margin {final['val_rewards/margins']:+.4f}"
               if "val_rewards/accuracies" in final else "")
        click.echo(f"DPO model written to {out}: {summary['steps']} steps, loss {final.get('loss', float('nan')):.4f}{acc}")


@click.command()
@click.option("--model", default=None, help="SFT checkpoint: the policy to train and the frozen reference.")
@click.option("--reward-model", default=None, help="Reward model folder (from `hangpt rm train`); same as --reward rm:DIR.")
@click.option("--reward", "rewards", multiple=True, help=_REWARD_HELP)
@click.option("--prompts", required=True, type=click.Path(dir_okay=False), help=_PROMPTS_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the policy to.")
@click.option("--mini-batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Rollouts per gradient step (--batch-size rollouts are sampled per PPO step).")
@click.option("--ppo-epochs", type=click.IntRange(min=1), default=4, show_default=True, help="Passes over each batch of rollouts.")
@sampling_options
@click.option("--kl-coef", type=Number(min=0), default=0.05, show_default=True,
              help="Per-token penalty on log pi - log pi_ref.")
@click.option("--gamma", type=Number(0, 1), default=1.0, show_default=True, help="GAE discount.")
@click.option("--lam", type=Number(0, 1), default=0.95, show_default=True, help="GAE lambda.")
@click.option("--clip-range", type=Number(min=0, min_open=True), default=0.2, show_default=True)
@click.option("--clip-range-value", type=Number(min=0, min_open=True), default=0.2, show_default=True)
@click.option("--vf-coef", type=Number(min=0), default=0.1, show_default=True, help="Weight of the value loss.")
@training_options
@lora_options
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON.")
def ppo(model, reward_model, rewards, prompts, out, mini_batch_size, ppo_epochs, kl_coef, gamma, lam, clip_range,
        clip_range_value, vf_coef, as_json, **opts):
    """RLHF with PPO: sample answers, score them with the reward model (or --reward sources), keep
    close to the reference.

    Logs per step mean reward, KL to the reference, entropy, clip fraction and value loss
    (train_log.jsonl, reward_curve.png). Defaults: batch 16 rollouts, lr 1e-5, 100 steps
    (--epochs counts passes over the prompts). Rollouts sample with the decoding flags (temperature
    1, at most 32 new tokens unless given)."""
    from ..train.ppo import PPOConfig, train_ppo

    require_model(model, opts["resume"])
    prompt_list, cfg, sampling = _rl_setup(prompts, out, opts, "PPO", reward_model, rewards)
    max_new_tokens, temperature = sampling.pop("max_new_tokens", 32), sampling.pop("temperature", 1.0)
    settings = PPOConfig(mini_batch_size=min(mini_batch_size, cfg.batch_size), ppo_epochs=ppo_epochs,
                         max_new_tokens=max_new_tokens, temperature=temperature, sampling=sampling, kl_coef=kl_coef,
                         gamma=gamma, lam=lam, clip_range=clip_range, clip_range_value=clip_range_value, vf_coef=vf_coef)
    summary = train_ppo(model, prompt_list, None, cfg, settings, reward_model=reward_model, rewards=list(rewards), log=log)
    _rl_report("PPO", out, summary, as_json)


def _reward_specs(reward_model, rewards) -> list[str]:
    """--reward-model DIR and the --reward specs as one checked list of specs."""
    from ..errors import InputError
    from ..train.rewards import parse_reward_spec

    specs = [*([f"rm:{reward_model}"] if reward_model else []), *rewards]
    if not specs:
        raise InputError("give --reward-model or --reward")
    for spec in specs:
        parse_reward_spec(spec)
    return specs


def _rl_setup(prompts, out, opts: dict, stage: str, reward_model, rewards, per_prompt: int = 1):
    """(prompts, TrainConfig, sampling settings) of an online RL command, reward specs checked
    first: batch 16, lr 1e-5, no weight decay, 100 steps unless --max-steps, --time-budget or
    --epochs (passes over the prompts, `per_prompt` answers each)."""
    import math

    from ..data.preferences import read_prompts
    from ..errors import InputError

    _reward_specs(reward_model, rewards)
    sampling = sampling_settings(opts)
    if sampling.get("temperature", 1.0) <= 0:
        raise InputError(f"--temperature must be > 0 for {stage} rollouts (the policy's log-probabilities divide by it)")
    prompt_list = read_prompts(prompts)
    log(f"{len(prompt_list)} prompts from {prompts}{prompt_list.skipped_note('prompts')}")
    cfg = train_config(out, {**opts, "epochs": None}, batch_size=16, lr=1e-5, default_epochs=None)
    if opts["epochs"] and not opts["max_steps"]:
        cfg.max_steps = max(1, math.ceil(opts["epochs"] * len(prompt_list) * per_prompt / cfg.batch_size))
    elif not (opts["max_steps"] or opts["time_budget"]):
        cfg.max_steps = 100
    cfg.epochs = None
    if opts["weight_decay"] is None:
        cfg.weight_decay = 0.0
    return prompt_list, cfg, sampling


def _rl_report(stage: str, out, summary: dict, as_json: bool) -> None:
    if as_json:
        print_json({"out": out, **summary})
    else:
        final = summary["final"]
        click.echo(f"{stage} policy written to {out}: {summary['steps']} steps, mean reward "
                   f"{final.get('reward', float('nan')):.4f}, KL {final.get('kl', float('nan')):.4f}")


@click.command()
@click.option("--model", default=None, help="SFT checkpoint: the policy to train and the frozen reference.")
@click.option("--reward", "rewards", multiple=True, help=_REWARD_HELP)
@click.option("--reward-model", default=None, help="Reward model folder; same as --reward rm:DIR.")
@click.option("--prompts", required=True, type=click.Path(dir_okay=False), help=_PROMPTS_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the policy to.")
@click.option("--num-generations", type=click.IntRange(min=1), default=8, show_default=True,
              help="Answers sampled per prompt (the group); --batch-size counts answers and must be a multiple.")
@click.option("--beta", type=Number(min=0), default=0.04, show_default=True,
              help="Weight of the k3 KL penalty to the reference (TRL's default is 0: no pull back).")
@click.option("--epsilon", type=Number(min=0, min_open=True), default=0.2, show_default=True, help="Clip range.")
@click.option("--epsilon-high", type=Number(min=0, min_open=True), default=None,
              help="Upper clip range (DAPO's clip-higher; default --epsilon).")
@click.option("--num-iterations", type=click.IntRange(min=1), default=1, show_default=True,
              help="Gradient steps on each batch of answers (mu).")
@click.option("--loss-type", type=click.Choice(["dapo", "grpo", "bnpo", "dr_grpo"]), default="dapo", show_default=True,
              help="How token losses are averaged (TRL's loss_type).")
@click.option("--scale-rewards", type=click.Choice(["group", "batch", "none"]), default="group", show_default=True,
              help="Divide advantages by the reward std of the group, of the batch, or not at all.")
@sampling_options
@training_options
@lora_options
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON.")
def grpo(model, rewards, reward_model, prompts, out, num_generations, beta, epsilon, epsilon_high, num_iterations,
         loss_type, scale_rewards, as_json, **opts):
    """GRPO: sample --num-generations answers per prompt, score them, and push up the ones that beat
    their group's mean (rewards standardised within the group), clipped as PPO, with a k3 KL penalty
    to the reference. No value head; rule rewards (--reward python:...) work as they are.

    Logs per step reward mean and std (within groups), KL to the reference (per answer), clip ratio,
    entropy and completion length (train_log.jsonl, reward_curve.png). Defaults: batch 16 answers
    (2 prompts x 8), lr 1e-5, 100 steps; --max-new-tokens is TRL's max_completion_length [64]."""
    from ..train.grpo import GRPOConfig, train_grpo

    require_model(model, opts["resume"])
    prompt_list, cfg, sampling = _rl_setup(prompts, out, opts, "GRPO", reward_model, rewards, per_prompt=num_generations)
    specs = _reward_specs(reward_model, rewards)
    settings = GRPOConfig(num_generations=num_generations, beta=beta, epsilon=epsilon, epsilon_high=epsilon_high,
                          temperature=sampling.pop("temperature", 1.0), max_completion_length=sampling.pop("max_new_tokens", 64),
                          loss_type=loss_type, scale_rewards=scale_rewards, num_iterations=num_iterations, sampling=sampling)
    summary = train_grpo(model, prompt_list, None, cfg, settings, rewards=specs, log=log)
    _rl_report("GRPO", out, summary, as_json)


def _named_folder(ctx, param, values):
    """`--policy NAME=DIR` pairs -> {name: dir}, in the order given."""
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{value!r}: expected NAME=DIR", ctx, param)
        out[name] = path
    return out


@click.command()
@click.option("--policy", "policies", multiple=True, required=True, callback=_named_folder,
              help="NAME=DIR of a policy to compare (repeatable); the first is the baseline of the win rates.")
@click.option("--reference", default=None, help="Model the KL is measured to [the first --policy].")
@click.option("--prompts", required=True, type=click.Path(dir_okay=False), help="Held-out prompts (as for ppo/grpo).")
@click.option("--reward", "rewards", multiple=True, help="The training reward (specs as for ppo/grpo; summed).")
@click.option("--reward-model", default=None, help="Reward model folder; same as --reward rm:DIR.")
@click.option("--judge", "judges", multiple=True,
              help="An independent judge, a reward spec the policies were not trained against (repeatable): "
                   "its mean score and win rate over the first policy are reported.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=24, show_default=True)
@click.option("--samples", type=click.IntRange(min=0), default=4, show_default=True,
              help="Prompts shown with each policy's greedy answer.")
@click.option("--samples-per-prompt", type=click.IntRange(min=1), default=4, show_default=True,
              help="Answers sampled per prompt for the means and win rates (more = less sampling noise).")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the table and samples as JSON.")
def compare(policies, reference, prompts, rewards, reward_model, judges, max_new_tokens, samples, samples_per_prompt, seed,
            device, as_json):
    """Policies side by side on held-out prompts: mean training reward of sampled answers, each
    --judge's mean and win rate over the first policy, KL to the reference (nats per answer),
    mean length (tokens) and distinct-2 (distinct token bigrams / all bigrams)."""
    from ..data.preferences import read_prompts
    from ..errors import InputError
    from ..train.compare import compare_policies

    if not (rewards or reward_model):
        raise InputError("give --reward or --reward-model (the training reward)")
    prompt_list = read_prompts(prompts)
    table = compare_policies(policies, reference or next(iter(policies.values())), reward_model, list(prompt_list),
                             seed=seed, max_new_tokens=max_new_tokens, n_samples=samples, rewards=list(rewards),
                             judges=list(judges), samples_per_prompt=samples_per_prompt)
    if as_json:
        print_json(table)
        return
    rows = table["policies"]
    columns = {c: c for c in ("reward", "kl", "length", "distinct2")}
    for i, spec in enumerate(judges, 1):
        columns.update({f"judge/{spec}": f"judge{i}", f"win/{spec}": f"win{i}"})
    width = max(map(len, rows)) + 2
    click.echo(f"{len(prompt_list)} held-out prompts, {samples_per_prompt} sampled answers each; KL to "
               f"{reference or next(iter(policies.values()))}")
    click.echo("policy".ljust(width) + "".join(f"{label:>11}" for label in columns.values()))
    for name, row in rows.items():
        click.echo(name.ljust(width) + "".join(f"{row[c]:>11.4f}" for c in columns))
    for i, spec in enumerate(judges, 1):
        click.echo(f"judge{i} = {spec}; win{i} = its win rate over {next(iter(policies))}")
    for s in table["samples"]:
        click.echo(f"\n> {s['prompt'] if isinstance(s['prompt'], str) else s['prompt'][-1]['content']}")
        for name, answer in s["answers"].items():
            click.echo(f"  {name}: {answer}")
