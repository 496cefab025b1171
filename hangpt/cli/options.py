"""Flags shared by several commands, so they are spelled and documented once."""

from __future__ import annotations

import json
import math
import sys

import click


class Number(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (nan passes every bound)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


SEED = click.IntRange(0, 2**32 - 1)  # numpy's and the data order's seed range


def _use_device(ctx, param, value):
    from ..device import use_device

    return use_device(value)


_device = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True,
    callback=_use_device, help="Run the model on this device (auto: a CUDA GPU, else Apple MPS, else the CPU).")


def _use_dtype(ctx, param, value):
    from ..checkpoint import use_dtype

    use_dtype(value)


def _dtype(default: str, why: str):
    return click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default=default,
                        show_default=True, expose_value=False, callback=_use_dtype, help=why)


def device_option(f):
    """--device, and --dtype for the loaded weights (inference: the checkpoint's own where it runs well)."""
    return _device(_dtype("auto", "Weights' dtype (auto: the checkpoint's, except bf16/fp16 on a CPU "
                                  "without native bf16, which computes faster in float32).")(f))


def training_options(f):
    """The flags every training command shares (see DESIGN.md, command-line conventions), with
    PyTorch/transformers names for the optimizer and the learning-rate schedule."""
    options = [
        click.option("--epochs", type=Number(min=0, min_open=True), default=None, help="Passes over the training data."),
        click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many optimizer steps."),
        click.option("--time-budget", type=Number(min=0, min_open=True), default=None,
                     help="Stop after this many minutes (the LR schedule is fitted to it)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Sequences per optimizer step."),
        click.option("--grad-accum", type=click.IntRange(min=1), default=1, help="Micro-batches per optimizer step."),
        click.option("--lr", type=Number(min=0, min_open=True), default=None, help="Peak learning rate."),
        click.option("--lr-schedule", type=click.Choice(["cosine", "linear", "constant"]), default="cosine",
                     show_default=True, help="After warmup: cosine to 10% of --lr, linear to 0, or constant."),
        click.option("--warmup-steps", type=click.IntRange(min=0), default=None,
                     help="Steps of linear warmup [default: the first 3% of training]."),
        click.option("--optimizer", type=click.Choice(["adamw", "adam", "muon"]), default="adamw", show_default=True,
                     help="torch.optim.AdamW (decoupled weight decay), torch.optim.Adam, or Muon for the "
                          "transformer blocks' matrices with AdamW for the rest."),
        click.option("--weight-decay", type=Number(min=0), default=None,
                     help="On weight matrices only [default: 0.1 with adamw, 0 with adam]."),
        click.option("--adam-betas", type=(float, float), default=None, help="Adam's (beta1, beta2) [0.9 0.95]."),
        click.option("--adam-eps", type=Number(min=0, min_open=True), default=None, help="Adam's epsilon [1e-8]."),
        click.option("--max-length", type=click.IntRange(min=2), default=None, help="Tokens per sequence."),
        click.option("--val-fraction", type=Number(0, 0.9), default=None, help="Share of the data held out for validation."),
        click.option("--eval-every", type=click.IntRange(min=1), default=None, help="Validate every N steps."),
        click.option("--save-every", type=click.IntRange(min=1), default=None, help="Checkpoint every N steps."),
        click.option("--seed", type=SEED, default=1234, show_default=True, help="Random seed."),
        click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out."),
        click.option("--overwrite", is_flag=True, help="Replace a checkpoint (finished or not) already in --out."),
        click.option("--bf16", is_flag=True, help="bfloat16 autocast (faster on CPUs with AVX512-BF16/AMX, and GPUs)."),
        click.option("--gradient-checkpointing", is_flag=True,
                     help="Recompute each block's activations in the backward pass: less memory, ~30% slower."),
        click.option("--no-progress", is_flag=True, help="No progress bar, plain log lines (the default when stderr is not a terminal)."),
        _device,
        _dtype("float32", "Weights' dtype while training (float32 master weights; --bf16 adds autocast)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _lora_targets(ctx, param, value):
    """`--lora-targets q_proj,v_proj` -> a list; `all-linear` stays PEFT's shorthand."""
    if value is None or value == "all-linear":
        return value
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise click.BadParameter("give module names, e.g. c_attn,c_proj or q_proj,v_proj, or all-linear")
    return names


def lora_options(f):
    """LoRA flags of the fine-tuning commands: only low-rank adapters (and new heads) train, the
    folder written is a PEFT adapter naming its base."""
    options = [
        click.option("--lora-r", type=click.IntRange(min=1), default=None,
                     help="Train LoRA adapters of this rank instead of every weight."),
        click.option("--lora-alpha", type=Number(min=0, min_open=True), default=None,
                     help="LoRA scaling numerator: updates are scaled by alpha / r [2 x r]."),
        click.option("--lora-dropout", type=Number(0, 1, max_open=True), default=0.05, show_default=True,
                     help="Dropout on the adapters' input."),
        click.option("--lora-targets", default=None, callback=_lora_targets,
                     help="Comma-separated layer names to adapt, or all-linear [PEFT's default for the family: "
                          "c_attn for GPT-2, q_proj,v_proj for Llama]."),
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


def _generation_flags() -> dict:
    """flag name -> click option, for every decoding flag: `--field-name VALUE` with the help text of
    the GenerationConfig field (engine/config.py), except the few flags shaped otherwise."""
    from dataclasses import fields

    from ..engine.config import GenerationConfig

    types = {"int": int, "float": float}
    shaped = {
        "do_sample": dict(param_decls=("--do-sample/--greedy", "do_sample")),
        "early_stopping": dict(type=click.Choice(["true", "false", "never"])),
        "eos_token_id": dict(type=int, multiple=True, default=()),
        "stop": dict(multiple=True, default=()),
        "logit_bias": dict(multiple=True, default=(), callback=_token_bias),
        "seed": dict(type=click.IntRange(-2**63, 2**63 - 1)),
        "valid_utf8": dict(is_flag=True),
    }
    flags = {}
    for f in fields(GenerationConfig):
        kwargs = {"type": types.get(f.type.split(" |")[0]), "default": None, "help": f.metadata["help"], **shaped.get(f.name, {})}
        decls = kwargs.pop("param_decls", ("--" + f.name.replace("_", "-"),))
        flags[f.name] = click.option(*decls, **kwargs)
    return flags


def _add_options(f, names):
    flags = _generation_flags()
    for name in reversed(names):
        f = flags[name](f)
    return f


def generation_options(f):
    """Decoding flags (transformers.generate / OpenAI names in kebab-case), shared by generate, chat
    and demo. Unset flags fall back to the checkpoint's generation_config.json, then the engine's
    defaults; turn them into a GenerationConfig with `generation_config_from_options`."""
    return _add_options(f, GENERATION_FLAGS)


def sampling_options(f):
    """The sampling subset of the decoding flags, for commands that sample as part of their work
    (PPO rollouts); collect them with `sampling_settings`."""
    return _add_options(f, SAMPLING_FLAGS)


GENERATION_FLAGS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                    "frequency_penalty", "presence_penalty", "no_repeat_ngram_size", "num_beams", "length_penalty",
                    "early_stopping", "num_return_sequences", "eos_token_id", "stop", "logit_bias", "logprobs", "seed",
                    "valid_utf8")
SAMPLING_FLAGS = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "frequency_penalty",
                  "presence_penalty", "no_repeat_ngram_size", "logit_bias")


def sampling_settings(kwargs: dict) -> dict:
    """Pop the sampling_options flags out of a command's kwargs: {GenerationConfig field: value} of
    those given, checked as generate checks them."""
    from ..engine import GenerationConfig

    given = {name: kwargs.pop(name, None) for name in SAMPLING_FLAGS}
    values = {name: v for name, v in given.items() if v not in (None, {})}
    _validated(GenerationConfig(do_sample=True, **values))
    return values


def generation_config_from_options(kwargs: dict, defaults: dict | None = None, stop: list[str] = ()):
    """Pop the generation_options flags out of a command's kwargs into a validated GenerationConfig.

    defaults: e.g. the checkpoint's generation_config.json (its eos/pad ids and any decoding
    defaults); extra `stop` strings (a chat template's) are added to --stop.
    """
    from ..engine import GenerationConfig

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
    return _validated(GenerationConfig.from_dict(values))


def _validated(config):
    """config, or an InputError naming the flag of its first bad field."""
    from ..errors import InputError

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
                      time_budget=opts["time_budget"], seed=opts["seed"], resume=opts["resume"],
                      overwrite=opts["overwrite"], bf16=opts["bf16"],
                      progress=not opts["no_progress"] and sys.stderr.isatty())
    apply_optimizer_options(cfg, opts)
    cfg.gradient_checkpointing = opts["gradient_checkpointing"]
    if opts.get("lora_r"):
        cfg.lora = {"r": opts["lora_r"], "alpha": opts["lora_alpha"],
                    "dropout": opts["lora_dropout"], "targets": opts["lora_targets"]}
    if opts["eval_every"]:
        cfg.eval_every = opts["eval_every"]
    if opts["save_every"]:
        cfg.save_every = opts["save_every"]
    return cfg


def apply_optimizer_options(cfg, opts: dict) -> None:
    """The optimizer and schedule flags onto a TrainConfig (unset ones keep its defaults)."""
    cfg.optimizer, cfg.lr_schedule, cfg.warmup_steps = opts["optimizer"], opts["lr_schedule"], opts["warmup_steps"]
    if opts["weight_decay"] is not None:
        cfg.weight_decay = opts["weight_decay"]
    elif cfg.optimizer == "adam":
        cfg.weight_decay = 0.0  # torch.optim.Adam's default, as the KoGPT2 lab trains
    if opts["adam_betas"] is not None:
        cfg.betas = tuple(opts["adam_betas"])
    if opts["adam_eps"] is not None:
        cfg.adam_eps = opts["adam_eps"]


def require_model(model, resume):
    """--model may be left out only when --resume continues the run already in --out."""
    if not model and not resume:
        raise click.UsageError("--model is required (unless --resume continues the run in --out)")
