"""The `hangpt` command. Subcommands live in their own modules and are imported only when run,
so `hangpt --help` starts without importing torch."""

from __future__ import annotations

import os
import sys
import warnings
from importlib import import_module

import click

from ..errors import HangptError, Interrupted

# name -> (module, attribute, one-line help shown by `hangpt --help`)
COMMANDS = {
    "demo": ("hangpt.cli.demo", "demo", "Build a small Korean ChatGPT end to end on the embedded data, then serve it."),
    "tokenizer": ("hangpt.cli.tokenizer", "tokenizer", "Train a byte-level BPE tokenizer; encode and decode text."),
    "pretrain": ("hangpt.cli.pretrain", "pretrain", "Pretrain a GPT from scratch by next-token prediction."),
    "eval": ("hangpt.cli.pretrain", "evaluate", "Loss, perplexity and bits per byte of a model on text."),
    "generate": ("hangpt.cli.generate", "generate", "Generate text with any decoding strategy."),
    "sft": ("hangpt.cli.finetune", "sft", "Fine-tune on Q/A pairs, prompt/completion or messages (loss on answers only)."),
    "chat": ("hangpt.cli.finetune", "chat", "Talk to a chat model in the terminal."),
    "classify": ("hangpt.cli.finetune", "classify", "Train, evaluate and use a GPT + linear head classifier."),
    "rm": ("hangpt.cli.align", "rm", "Train a reward model on ranked answers; score answers."),
    "dpo": ("hangpt.cli.align", "dpo", "Align a model with Direct Preference Optimization."),
    "ppo": ("hangpt.cli.align", "ppo", "Align a model with PPO against a reward model (RLHF)."),
    "compare": ("hangpt.cli.align", "compare", "Policies side by side: reward, independent judges, KL, length, diversity."),
    "grpo": ("hangpt.cli.align", "grpo", "Align a model with GRPO: answers scored against their group (rules, classifiers, RMs)."),
    "merge": ("hangpt.cli.merge", "merge", "Fold a LoRA adapter into its base model (a full checkpoint folder)."),
    "serve": ("hangpt.cli.serve", "serve", "OpenAI-compatible API and web playground."),
    "feedback": ("hangpt.cli.serve", "feedback", "Export rankings collected in the playground as preference pairs."),
    "inspect": ("hangpt.cli.serve", "inspect", "Show tokens, hidden states, parameters and attention maps."),
    "lstm": ("hangpt.cli.lstm", "lstm", "Train the LSTM language-model baseline and continue a prompt (to compare with GPT)."),
    "nlp": ("hangpt.cli.nlp", "nlp", "Classic NLP: Korean morphemes, word counts, TF-IDF, word2vec, baselines."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        try:
            return getattr(import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise click.ClickException(f"command {name!r} is not available in this installation ({e})") from None

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="hangpt")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors (or set HANGPT_DEBUG=1).")
def cli(debug):
    """hangpt: build your own Korean-first ChatGPT, from raw text to a chat model you can talk to,
    align and look inside.

    Every command that reads a model takes --model (a checkpoint folder or a Hugging Face hub id),
    every command that writes one takes --out.
    """


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HANGPT_DEBUG") == "1"
    if not debug:  # warnings as one line each, like errors
        warnings.formatwarning = lambda message, category, *rest, **kw: f"warning: {message}\n"
    try:
        code = cli.main(args=argv, prog_name="hangpt", standalone_mode=False)
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.ClickException as e:
        click.echo(f"error: {_one_line(e)}", err=True)
        code = e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = 130
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        code = 130
    except Interrupted as e:
        click.echo(str(e), err=True)
        code = e.exit_code
    except HangptError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        code = e.exit_code
    except Exception as e:  # a bug or an environment problem: still one line unless asked
        if debug:
            raise
        click.echo(f"error: {type(e).__name__}: {e} (run with --debug for the traceback)", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(e: click.ClickException) -> str:
    """A bad command line as one line naming the flag, like every other error (no usage block)."""
    if isinstance(e, click.BadParameter) and not isinstance(e, click.MissingParameter) and e.param is not None:
        name = "/".join(e.param.opts) if isinstance(e.param, click.Option) else e.param.human_readable_name
        message = f"{name}: {e.message}"
    else:
        message = e.format_message()
    message = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    if isinstance(e, click.UsageError) and e.ctx is not None:
        message += f" (see {e.ctx.command_path} --help)"
    return message
