"""`hangpt demo`."""

from __future__ import annotations

import click

from .options import Number, print_json


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True,
              help="Run folder: one checkpoint folder per stage, report.md and its plots.")
@click.option("--minutes", type=Number(min=0.05), default=None,
              help="Fit the run into about this many minutes by scaling every stage's steps down (measured "
                   "speed); the report says which stages then got less training than the demo needs.")
@click.option("--work", type=Number(min=0.01), default=1.0, show_default=True,
              help="Multiply every stage's steps (2 = twice the training).")
@click.option("--base", default=None,
              help="Skip pretraining and fine-tune this model instead (a checkpoint folder, or a hub id "
                   "such as skt/kogpt2-base-v2 when online).")
@click.option("--no-progress", is_flag=True, help="No progress bars; plain log lines only (also when stderr "
                                                  "is not a terminal).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Use real data instead of the embedded set: .txt files to pretrain on, a Q,A CSV "
                   "(ChatbotData format) to fine-tune on, optionally prompts.txt.")
@click.option("--text", "text_files", multiple=True, type=click.Path(dir_okay=False),
              help="Pretraining text file (repeatable; overrides the text of --data-dir).")
@click.option("--qa", type=click.Path(dir_okay=False), default=None,
              help="Q,A CSV to fine-tune on (overrides the CSV of --data-dir).")
@click.option("--seed", type=int, default=1234, show_default=True)
@click.option("--eval-prompts", type=click.IntRange(min=1), default=40, show_default=True,
              help="Held-out prompts the SFT, DPO and PPO policies are compared on.")
@click.option("--no-serve", is_flag=True, help="Stop after the report instead of opening the playground.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Playground port.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON at the end.")
@click.option("--export-data", type=click.Path(file_okay=False), default=None,
              help="Only copy the embedded demo data (Korean text, Q/A CSV, prompts) into this folder.")
@click.pass_context
def demo(ctx, out, minutes, work, base, no_progress, data_dir, text_files, qa, seed, eval_prompts, no_serve, port,
         as_json, export_data):
    """Build a small Korean ChatGPT end to end, then open the playground.

    Trains a tokenizer, pretrains a tiny GPT, fine-tunes it into a chatbot, makes preference pairs,
    trains a reward model, aligns the chatbot with DPO and PPO, compares the three policies with the
    reward model, and writes OUT/report.md. Each stage does a fixed number of steps, so the result
    does not depend on the machine's load; the expected time is printed up front (about 10 minutes
    on 2 CPU cores).
    """
    import sys
    from pathlib import Path

    from ..demo import Demo, DemoData, clean_output, copy_embedded_data, embedded_data, find_data

    if export_data:
        for path in copy_embedded_data(Path(export_data)):
            click.echo(path)
        return
    qa_path = Path(qa) if qa else None
    data = find_data(Path(data_dir), qa_path) if data_dir else embedded_data()
    if text_files or qa_path:
        data = DemoData([Path(t) for t in text_files] or data.text, qa_path or data.qa, data.prompts)
    out_dir = Path(out)
    clean_output(out_dir)
    progress = not no_progress and sys.stderr.isatty()
    result = Demo(out_dir, data, minutes, seed=seed, eval_prompts=eval_prompts, work=work, base=base,
                  progress=progress).run()
    if as_json:
        print_json({"out": str(out_dir), "minutes": result.minutes, "figures": result.figures})
    else:
        click.echo(f"\ndemo finished in {result.minutes} minutes; report: {out_dir / 'report.md'}")
    if not no_serve:
        from .serve import serve

        click.echo(f"opening the playground on http://127.0.0.1:{port}/ (Ctrl-C to stop)", err=True)
        ctx.invoke(serve, model=str(out_dir / "ppo"), port=port)
