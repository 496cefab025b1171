"""`hangpt lstm`: the LSTM baseline, trained and asked for the next words in one go."""

from __future__ import annotations

import click

from .options import device_option, log, print_json


@click.command()
@click.option("--data", "data", multiple=True, required=True, help="Text files or folders (one document per line).")
@click.option("--tokenizer", "tokenizer_dir", required=True,
              help="Tokenizer folder (or a checkpoint folder), so the LSTM sees the same tokens as the GPT.")
@click.option("--prompt", "prompts", multiple=True, required=True, help="Text to continue (repeatable).")
@click.option("--max-steps", type=click.IntRange(min=1), default=150, show_default=True, help="Training steps.")
@click.option("--max-length", type=click.IntRange(min=2), default=16, show_default=True, help="Tokens per training window.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-3, show_default=True, help="Adam's learning rate.")
@click.option("--hidden-size", type=click.IntRange(min=1), default=256, show_default=True, help="LSTM state size.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=int, default=1234, show_default=True)
@device_option
@click.option("--json", "as_json", is_flag=True, help='Print {"parameters", "loss", "completions"} as JSON.')
def lstm(data, tokenizer_dir, prompts, max_steps, max_length, batch_size, lr, hidden_size, max_new_tokens, seed,
         device, as_json):
    """Train a small LSTM language model (nn.LSTM) by next-token prediction, then continue each
    --prompt greedily: the model GPT replaced, on the same corpus and question. Nothing is saved."""
    from ..data.text import iter_documents
    from ..tokenizer import Tokenizer
    from ..train.lstm import train_lstm

    tokenizer = Tokenizer.load(tokenizer_dir)
    eos = tokenizer.eos_id
    tokens = [t for doc in iter_documents(data) for t in ([eos] if eos is not None else []) + tokenizer.encode(doc)]
    model, losses = train_lstm(tokens, tokenizer.vocab_size, steps=max_steps, seq_len=max_length,
                               batch_size=batch_size, lr=lr, seed=seed, hidden_size=hidden_size)
    log(f"LSTM: {model.num_parameters():,} parameters, {max_steps} steps on {len(tokens):,} tokens, "
        f"final loss {losses[-1]:.4f}")
    completions = [tokenizer.decode(model.generate(tokenizer.encode(p), max_new_tokens, eos)) for p in prompts]
    if as_json:
        print_json({"parameters": model.num_parameters(), "loss": round(losses[-1], 6),
                    "completions": [{"prompt": p, "text": c} for p, c in zip(prompts, completions)]})
    else:
        for c in completions:
            click.echo(c)
