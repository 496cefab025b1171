"""`hangpt serve`, `hangpt feedback export` and `hangpt inspect`."""

from __future__ import annotations

import click

from .options import device_option, log, print_json


@click.command()
@click.option("--model", "models", required=True, multiple=True,
              help="Checkpoint folder (or hub id) to serve; repeat it to serve several, as DIR (named after the "
                   "folder) or NAME=DIR. Requests pick one by their `model` field (the first by default).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 127.0.0.1 keeps the server private to this machine.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", default=None, envvar="HANGPT_API_KEY",
              help="Require `Authorization: Bearer KEY` on /v1/* (also HANGPT_API_KEY).")
@click.option("--feedback-db", type=click.Path(dir_okay=False), default=None,
              help="SQLite file for playground rankings [default: MODEL/feedback.sqlite, or "
                   "./hangpt-run/feedback.sqlite when the checkpoint folder is read-only].")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Sequences decoded together in one batch.")
@click.option("--batching", type=click.Choice(["continuous", "static"]), default="continuous", show_default=True,
              help="continuous: a request joins the running batch at the next step; static: it waits for the "
                   "batch to end (for comparison).")
@click.option("--max-tokens-limit", type=click.IntRange(min=1), default=None,
              help="Largest max_tokens a request may ask for [default: the model's context].")
@click.option("--max-n", type=click.IntRange(min=1), default=8, show_default=True, help="Largest n per request.")
@click.option("--model-name", default=None, help="The id /v1/models reports [default: the folder name].")
@device_option
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="Also answer requests whose Host header is this name (repeatable; * answers any). By default "
                   "only the names of the --host address are answered, which keeps web pages from reaching the "
                   "server through DNS rebinding.")
def serve(models, host, port, api_key, feedback_db, max_batch_size, batching, max_tokens_limit, max_n, model_name, device, allowed_hosts):
    """OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models) and the web
    playground at / (chat, compare-and-rank, attention maps)."""
    import os
    from pathlib import Path

    import uvicorn

    from ..checkpoint import load_checkpoint
    from ..serve.app import ServerSettings, allowed_hosts_for, create_app

    named = _model_names(models, model_name)
    checkpoints = {}
    for name, folder in named.items():
        checkpoints[name] = load_checkpoint(folder)
        checkpoints[name].model.to(device)
    ckpt = next(iter(checkpoints.values()))
    if feedback_db is None:
        folder = ckpt.path if ckpt.path and os.access(ckpt.path, os.W_OK) else Path("hangpt-run")
        feedback_db = Path(folder) / "feedback.sqlite"
    settings = ServerSettings(
        model_name=next(iter(named)),
        api_key=api_key,
        feedback_db=Path(feedback_db),
        max_batch_size=max_batch_size,
        batching=batching,
        max_tokens_limit=max_tokens_limit or max(c.model.config.context_length for c in checkpoints.values()),
        max_n=max_n,
        allowed_hosts=allowed_hosts_for(host, allowed_hosts),
    )
    app = create_app(checkpoints, settings)
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    for name, c in checkpoints.items():
        click.echo(f"serving {name} ({c.model.num_parameters() / 1e6:.1f}M parameters)", err=True)
    click.echo(f"  playground:  http://{shown}:{port}/", err=True)
    click.echo(f"  OpenAI API:  http://{shown}:{port}/v1  (api key {'required' if api_key else 'not required'})",
               err=True)
    click.echo(f"  rankings saved to {feedback_db}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _model_names(models: tuple[str, ...], model_name: str | None) -> dict[str, str]:
    """{name: folder} from the --model values: NAME=DIR, or DIR named after its folder (--model-name
    renames a single model)."""
    from pathlib import Path

    from ..errors import InputError

    named = {}
    for value in models:
        name, sep, folder = value.partition("=")
        if not sep or Path(value).exists():
            name, folder = Path(value.rstrip("/")).name or value, value
        if len(models) == 1 and model_name:
            name = model_name
        if not name or name in named:
            raise InputError(f"--model {value}: {'the name is empty' if not name else f'a second model named {name!r}'}"
                             " (give each one a name as NAME=DIR)")
        named[name] = folder
    return named


@click.group()
def feedback():
    """Export rankings collected in the playground as preference pairs."""


@feedback.command()
@click.option("--db", required=True, type=click.Path(dir_okay=False), help="The playground's SQLite file.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL file of prompt/chosen/rejected.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def export(db, out, as_json):
    """Write every ranked pair (better, worse) as {"prompt", "chosen", "rejected"} JSONL, the
    format `hangpt rm train` reads."""
    from ..serve.feedback import export_pairs

    summary = export_pairs(db, out)
    if as_json:
        print_json(summary)
    else:
        click.echo(f"{summary['pairs']} preference pairs from {summary['rankings']} rankings written to {out}")


@click.command()
@click.option("--model", required=True, help="Checkpoint folder (or hub id).")
@click.option("--text", required=True, help="Text to run through the model.")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many next-token candidates to show.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for attention heatmap PNGs (attention_L{l}_H{h}.png, attention_layer{l}.png).")
@click.option("--layer", type=int, default=None, help="Only this layer's heatmaps [default: every layer].")
@click.option("--head", type=int, default=None, help="Only this head [default: every head, plus a grid per layer].")
@click.option("--graph", type=click.Path(dir_okay=False), default=None,
              help="Draw the computation graph of the forward pass to this .png/.svg/.pdf (needs Graphviz).")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object.")
def inspect(model, text, top_k, out, layer, head, graph, device, as_json):
    """Show the tokens, each layer's hidden-state shape, parameters per module, the most likely
    next tokens, and write attention heatmaps and the computation graph."""
    from pathlib import Path

    from ..checkpoint import load_checkpoint
    from ..errors import InputError
    from ..inspect import inspect_text, parameter_summary, plot_attention, plot_attention_grid, plot_graph

    ckpt = load_checkpoint(model)
    ckpt.model.to(device)
    found = inspect_text(ckpt.model, ckpt.tokenizer, text, top_k=top_k)
    n_layers, n_heads = len(found.attentions), found.attentions[0].shape[0]
    for flag, value, count in (("--layer", layer, n_layers), ("--head", head, n_heads)):
        if value is not None and not 0 <= value < count:
            raise InputError(f"{flag} {value}: the model has {count} {flag[2:]}s (0..{count - 1})")
    n_tokens = len(ckpt.tokenizer.encode(text))
    if n_tokens > len(found.ids):
        log(f"note: the text has {n_tokens} tokens; only the last {len(found.ids)} (the model's context) are shown")
    params = parameter_summary(ckpt.model)
    images: list[str] = []
    if out:
        layers = [layer] if layer is not None else range(len(found.attentions))
        for l in layers:
            heads = [head] if head is not None else range(found.attentions[0].shape[0])
            for h in heads:
                images.append(str(plot_attention(found, l, h, Path(out) / f"attention_L{l}_H{h}.png")))
            if head is None:
                images.append(str(plot_attention_grid(found, l, Path(out) / f"attention_layer{l}.png")))
    if graph:
        images.append(str(plot_graph(ckpt.model, ckpt.tokenizer, text, graph)))
    if as_json:
        print_json({**found.to_dict(), "parameters": params, "images": images})
        return
    click.echo(f"{len(found.ids)} tokens:")
    for i, (tid, piece) in enumerate(zip(found.ids, found.pieces)):
        click.echo(f"  {i:>4}  {tid:>7}  {piece!r}")
    click.echo("hidden states (batch, tokens, width):")
    for entry in found.to_dict()["hidden_states"]:
        click.echo(f"  {entry['name']:<20} {tuple(entry['shape'])}")
    click.echo("parameters:")
    for row in params:
        note = f"  ({row['note']})" if "note" in row else ""
        click.echo(f"  {row['module']:<20} {row['parameters']:>12,}{note}")
    click.echo("most likely next tokens:")
    for t in found.top_next:
        click.echo(f"  {t['prob']:>8.4f}  {t['id']:>7}  {t['token']!r}")
    heatmaps = len(images) - bool(graph)
    if heatmaps:
        click.echo(f"{heatmaps} attention heatmaps written to {out}")
    if graph:
        click.echo(f"computation graph written to {graph}")
