"""Flags shared by several commands, so they are spelled and documented once."""

from __future__ import annotations

import json
import sys

import click


def training_options(f):
    """The flags every training command shares (see DESIGN.md, command-line conventions)."""
    options = [
        click.option("--epochs", type=float, default=None, help="Passes over the training data."),
        click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many optimizer steps."),
        click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Stop after this many minutes (the LR schedule is fitted to it)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Sequences per optimizer step."),
        click.option("--grad-accum", type=click.IntRange(min=1), default=1, help="Micro-batches per optimizer step."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Peak learning rate."),
        click.option("--max-length", type=click.IntRange(min=2), default=None, help="Tokens per sequence."),
        click.option("--val-fraction", type=click.FloatRange(0, 0.9), default=None, help="Share of the data held out for validation."),
        click.option("--eval-every", type=click.IntRange(min=1), default=None, help="Validate every N steps."),
        click.option("--save-every", type=click.IntRange(min=1), default=None, help="Checkpoint every N steps."),
        click.option("--seed", type=int, default=1234, show_default=True, help="Random seed."),
        click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out."),
        click.option("--bf16", is_flag=True, help="bfloat16 autocast (faster on CPUs with AVX512-BF16/AMX, and GPUs)."),
        click.option("--no-progress", is_flag=True, help="No progress bar (logs and pipes)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _token_bias(ctx, param, values):
    """`--logit-bias ID=BIAS` pairs -> {id: bias}."""
    out = {}
    for v in values:
        token, sep, bias = v.partition("=")
        try:
            out[int(token)] = float(bias)
        except ValueError:
            raise click.BadParameter(f"{v!r} is not ID=BIAS (e.g. 42=-100)") from None
        if not sep:
            raise click.BadParameter(f"{v!r} is not ID=BIAS (e.g. 42=-100)")
    return out


def generation_options(f):
    """Decoding flags (transformers.generate / OpenAI names in kebab-case), shared by generate, chat
    and demo. Unset flags fall back to the checkpoint's generation_config.json, then the engine's
    defaults; turn them into a GenerationConfig with `generation_config_from_options`."""
    options = [
        click.option("--max-new-tokens", type=int, default=None, help="Tokens to generate at most [64]."),
        click.option("--do-sample/--greedy", "do_sample", default=None,
                     help="Sample (with the filters below) instead of greedy/beam decoding."),
        click.option("--temperature", type=float, default=None, help="Sampling temperature [1.0]."),
        click.option("--top-k", type=int, default=None, help="Sample among the k most likely tokens (0 = off)."),
        click.option("--top-p", type=float, default=None, help="Nucleus sampling: smallest set with this much probability."),
        click.option("--min-p", type=float, default=None, help="Drop tokens below min-p x the top token's probability."),
        click.option("--repetition-penalty", type=float, default=None, help="transformers' penalty on seen tokens (1 = off)."),
        click.option("--frequency-penalty", type=float, default=None, help="OpenAI: subtract this x count of each generated token."),
        click.option("--presence-penalty", type=float, default=None, help="OpenAI: subtract this from every generated token."),
        click.option("--no-repeat-ngram-size", type=int, default=None, help="Never repeat an n-gram of this size."),
        click.option("--num-beams", type=int, default=None, help="Beam search with this many beams (1 = off)."),
        click.option("--length-penalty", type=float, default=None, help="Beam score = logprob / length ** this [1.0]."),
        click.option("--early-stopping", type=click.Choice(["true", "false", "never"]), default=None,
                     help="Beam search stopping rule, as in transformers."),
        click.option("--num-return-sequences", type=int, default=None, help="Sequences per prompt."),
        click.option("--eos-token-id", type=int, multiple=True, help="Stop at this token id (repeatable; default: the model's)."),
        click.option("--stop", multiple=True, help="Stop string, not included in the output (repeatable)."),
        click.option("--logit-bias", multiple=True, callback=_token_bias, help="ID=BIAS added to a token's logit (repeatable)."),
        click.option("--logprobs", type=int, default=None, help="Report each token's logprob and the N most likely alternatives."),
        click.option("--seed", type=int, default=None, help="Random seed (sampling repeats exactly)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


GENERATION_FLAGS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                    "frequency_penalty", "presence_penalty", "no_repeat_ngram_size", "num_beams", "length_penalty",
                    "early_stopping", "num_return_sequences", "eos_token_id", "stop", "logit_bias", "logprobs", "seed")


def generation_config_from_options(kwargs: dict, defaults: dict | None = None, stop: list[str] = ()):
    """Pop the generation_options flags out of a command's kwargs into a validated GenerationConfig.

    defaults: e.g. the checkpoint's generation_config.json (its eos/pad ids and any decoding
    defaults); extra `stop` strings (a chat template's) are added to --stop.
    """
    from ..engine import GenerationConfig

    from ..errors import InputError

    values = dict(defaults or {})
    for name in GENERATION_FLAGS:
        v = kwargs.pop(name, None)
        if v is None or v == () or v == {}:
            continue
        if name == "early_stopping":
            v = {"true": True, "false": False}.get(v, v)
        elif name == "eos_token_id":
            v = list(v) if len(v) > 1 else v[0]
        elif name == "stop":
            v = list(v)
        values[name] = v
    values["stop"] = list(values.get("stop", [])) + [s for s in stop if s not in values.get("stop", [])]
    config = GenerationConfig.from_dict(values)
    try:
        config.validate()
    except InputError as e:  # name the flag, not the field: "--top-p 1.5: must be in (0, 1]"
        field, sep, rest = str(e).partition("=")
        if sep and field in GENERATION_FLAGS:
            raise InputError(f"--{field.replace('_', '-')} {rest}") from None
        raise
    return config


def print_json(obj) -> None:
    """`--json` output: one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_evaluation(result: dict, as_json: bool = False) -> None:
    """Accuracy and the confusion matrix (rows = true label) of a classifier, from a dict with
    accuracy, n, confusion, labels and skipped_empty; shared by `classify eval` and the NLP baselines."""
    if as_json:
        print_json(result)
        return
    skipped = result.get("skipped_empty")
    click.echo(f"accuracy {result['accuracy']:.2%} on {result['n']} texts"
               + (f" ({skipped} empty rows skipped)" if skipped else ""))
    labels = result["labels"]
    width = max(8, *(len(label) + 2 for label in labels))
    click.echo("true \\ predicted".ljust(width + 8) + "".join(label.rjust(width) for label in labels))
    for label, row in zip(labels, result["confusion"]):
        click.echo(label.ljust(width + 8) + "".join(str(c).rjust(width) for c in row))


def log(message: str) -> None:
    """Progress and notes go to stderr, so stdout stays clean for --json."""
    click.echo(message, err=True)


def train_config(out, opts: dict, *, batch_size: int, lr: float, default_epochs: float):
    """TrainConfig from the shared training flags, with this stage's defaults for unset ones."""
    from pathlib import Path

    from ..train.loop import TrainConfig

    epochs = opts["epochs"]
    if not (epochs or opts["max_steps"] or opts["time_budget"]):
        epochs = default_epochs
    cfg = TrainConfig(out=Path(out), batch_size=opts["batch_size"] or batch_size, grad_accum=opts["grad_accum"],
                      lr=opts["lr"] or lr, max_steps=opts["max_steps"], epochs=epochs,
                      time_budget=opts["time_budget"], seed=opts["seed"], resume=opts["resume"], bf16=opts["bf16"],
                      progress=not opts["no_progress"])
    if opts["eval_every"]:
        cfg.eval_every = opts["eval_every"]
    if opts["save_every"]:
        cfg.save_every = opts["save_every"]
    return cfg


def require_model(model, resume):
    """--model may be left out only when --resume continues the run already in --out."""
    if not model and not resume:
        raise click.UsageError("--model is required (unless --resume continues the run in --out)")
