"""`hangpt tokenizer train|encode|decode`."""

from __future__ import annotations

import click

from .options import Number, print_json


@click.group()
def tokenizer():
    """Train a byte-level BPE tokenizer; encode and decode text."""


@tokenizer.command()
@click.option("--data", "data", multiple=True, required=True, help="Text file or folder (repeatable; .txt, .gz).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write tokenizer.json into.")
@click.option("--vocab-size", type=click.IntRange(min=64), default=8192, show_default=True)
@click.option("--min-frequency", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--val-fraction", type=Number(0, 0.5), default=0.02, show_default=True,
              help="Share of the lines held out to report bytes per token on unseen text (0.02: every 50th line).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def train(data, out, vocab_size, min_frequency, val_fraction, as_json):
    """Train a tokenizer on text files or folders."""
    from pathlib import Path

    from ..data.text import iter_documents
    from ..tokenizer import bytes_per_token, train_tokenizer

    every = int(round(1 / val_fraction)) if val_fraction > 0 else 0
    held_out: list[str] = []

    def training_lines():
        for i, line in enumerate(iter_documents(data)):
            if every and i % every == every - 1:
                held_out.append(line)
            else:
                yield line

    tok = train_tokenizer(training_lines(), vocab_size=vocab_size, min_frequency=min_frequency)
    if tok.vocab_size < vocab_size:
        click.echo(f"warning: the text has too few distinct pieces for {vocab_size} tokens (merges seen at least "
                   f"{min_frequency} times); the vocabulary has {tok.vocab_size}", err=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    tok.save(out)
    summary = {"out": out, "vocab_size": tok.vocab_size, "held_out_lines": len(held_out)}
    if held_out:
        summary["held_out_bytes_per_token"] = round(bytes_per_token(tok, held_out), 3)
    if as_json:
        print_json(summary)
    else:
        click.echo(f"tokenizer with {tok.vocab_size} tokens written to {out}")
        if held_out:
            click.echo(f"held-out text: {summary['held_out_bytes_per_token']} bytes per token "
                       f"({len(held_out)} lines)")


def _load(model_or_tokenizer: str):
    from ..checkpoint import resolve_model_dir
    from ..tokenizer import Tokenizer

    return Tokenizer.load(resolve_model_dir(model_or_tokenizer))


@tokenizer.command()
@click.option("--model", "source", required=True, help="Checkpoint or tokenizer folder (or hub id).")
@click.option("--text", required=True, help="Text to encode.")
@click.option("--json", "as_json", is_flag=True, help="Print ids and pieces as JSON.")
def encode(source, text, as_json):
    """Print the ids of TEXT and the piece of text each id stands for."""
    tok = _load(source)
    ids = tok.encode(text)
    pieces = tok.pieces(ids)
    if as_json:
        print_json({"ids": ids, "pieces": pieces})
        return
    click.echo(f"{len(ids)} tokens, {len(text.encode('utf-8')) / max(len(ids), 1):.2f} bytes per token")
    for i, piece in zip(ids, pieces):
        click.echo(f"{i:>8}  {piece!r}")


@tokenizer.command()
@click.option("--model", "source", required=True, help="Checkpoint or tokenizer folder (or hub id).")
@click.argument("ids", nargs=-1, type=int, required=True)
def decode(source, ids):
    """Print the text of token IDS."""
    tok = _load(source)
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        from ..errors import InputError

        raise InputError(f"id {bad[0]} is outside the vocabulary (0..{tok.vocab_size - 1})")
    click.echo(tok.decode(ids))
