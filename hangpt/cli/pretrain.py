"""`hangpt pretrain` and `hangpt eval`."""

from __future__ import annotations

import sys

import click

from .options import apply_optimizer_options, device_option, print_json, training_options

_DATA_HELP = "Text files or folders (.txt, .gz; TSV/CSV with --text-column): `--data A B` or `--data A --data B`."
_COLUMN_HELP = ("Take this column of TSV/CSV files whose header has it (e.g. `document` for NSMC); "
                "other files are read line by line.")


@click.command()
@click.option("--data", "data", multiple=True, required=True, help=_DATA_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Checkpoint folder to write.")
@click.option("--arch", type=click.Choice(["gpt2", "llama"]), default="llama", show_default=True,
              help="Architecture of a new model: GPT-2 (learned positions, LayerNorm, GELU) or Llama (RoPE, "
                   "RMSNorm, SwiGLU, grouped-query attention).")
@click.option("--preset", default="tiny", show_default=True,
              help="Model shape for a new model: tiny, small (both architectures), kogpt2 (gpt2).")
@click.option("--model", "model_dir", default=None, help="Continue pretraining this checkpoint instead of a new model.")
@click.option("--tokenizer", "tokenizer_dir", default=None,
              help="Tokenizer folder; by default one is trained on the data (vocab size from the preset).")
@click.option("--vocab-size", type=click.IntRange(min=300), default=None,
              help="Size of the tokenizer trained on the data (default: the preset's, 8192 for tiny); a small "
                   "corpus generalises better with a smaller one.")
@click.option("--text-column", default=None, help=_COLUMN_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON.")
@click.argument("more_data", nargs=-1, metavar="")
@training_options
def pretrain(data, more_data, out, arch, preset, model_dir, tokenizer_dir, vocab_size, text_column, overwrite, as_json,
             epochs, max_steps, time_budget, batch_size, grad_accum, lr, max_length, val_fraction, eval_every,
             save_every, seed, resume, bf16, no_progress, **opts):
    """Pretrain a GPT from scratch (or continue one) by next-token prediction on text.

    A new model is a Llama-layout model trained with Muon and a learning rate decayed linearly to
    zero (3e-3 at the peak for `tiny`) unless --arch/--optimizer/--lr-schedule/--lr say otherwise;
    the 2019 recipe is `--arch gpt2 --optimizer adamw --lr-schedule cosine`.

    Checkpoints go to --out every --save-every steps; after a crash or Ctrl-C, run the same
    command with --resume to continue exactly where the last checkpoint left off.
    """
    from pathlib import Path

    from ..train.loop import TrainConfig
    from ..train.pretrain import pretrain as run

    cfg = TrainConfig(out=Path(out), batch_size=batch_size or 16, grad_accum=grad_accum, lr=lr, max_steps=max_steps,
                      epochs=epochs, time_budget=time_budget, eval_every=eval_every or 200,
                      save_every=save_every or 200, seed=seed, resume=resume, bf16=bf16,
                      progress=not no_progress and sys.stderr.isatty())
    apply_optimizer_options(cfg, {**opts, **_recipe_defaults(opts)})
    if not (max_steps or epochs or time_budget):
        from ..errors import InputError

        raise InputError("give --max-steps, --epochs or --time-budget")
    summary = run([*data, *more_data], out, cfg, preset=preset, arch=arch, model_dir=model_dir,
                  tokenizer_dir=tokenizer_dir, vocab_size=vocab_size, max_length=max_length, val_fraction=0.02 if val_fraction is None else val_fraction,
                  text_column=text_column, overwrite=overwrite)
    if summary is None:  # a DDP rank other than 0: rank 0 reports
        return
    if as_json:
        print_json(summary)
    else:
        final = summary.get("final", {})
        shown = ", ".join(f"{k} {final[k]:.4f}" for k in ("loss", "val_loss", "val_bpb") if k in final)
        click.echo(f"{summary['steps']} steps, {summary['tokens']:,} tokens in {summary['minutes']} min ({shown}); "
                   f"checkpoint in {out}")


def _recipe_defaults(opts: dict) -> dict:
    """Pretraining's own optimizer and schedule (train.pretrain.RECIPE) for the flags left unset."""
    from click.core import ParameterSource

    from ..train.pretrain import RECIPE

    ctx = click.get_current_context()
    return {k: v for k, v in RECIPE.items() if k in opts and ctx.get_parameter_source(k) is ParameterSource.DEFAULT}


@click.command(name="eval")
@click.option("--model", "model_dir", required=True, help="Checkpoint folder (or hub id).")
@click.option("--data", "data", multiple=True, required=True, help=_DATA_HELP)
@click.option("--text-column", default=None, help=_COLUMN_HELP)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.argument("more_data", nargs=-1, metavar="")
def evaluate(model_dir, data, more_data, text_column, batch_size, device, as_json):
    """Loss, perplexity and bits per byte of a model on text (windows of the model's context)."""
    from ..checkpoint import load_checkpoint
    from ..train.pretrain import evaluate_text

    ckpt = load_checkpoint(model_dir)
    ckpt.model.to(device)
    result = evaluate_text(ckpt.model, ckpt.tokenizer, [*data, *more_data], text_column=text_column, batch_size=batch_size)
    if as_json:
        print_json(result)
    else:
        click.echo(f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  "
                   f"bits per byte {result['bits_per_byte']:.4f}  ({result['tokens']:,} tokens, {result['bytes']:,} bytes)")
