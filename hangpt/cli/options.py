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
    ]
    for option in reversed(options):
        f = option(f)
    return f


def print_json(obj) -> None:
    """`--json` output: one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()
