"""`hangpt merge`: fold a LoRA adapter into its base, giving a full checkpoint folder."""

from __future__ import annotations

import click

from .options import log


@click.command()
@click.option("--model", required=True, help="LoRA adapter folder (written by a --lora-r run, or by PEFT).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the full model to.")
def merge(model, out):
    """Write base + adapter as one full checkpoint (W + alpha/r * B A in every adapted layer), in the
    family's Hugging Face layout, with the adapter's tokenizer, chat template and heads."""
    from ..checkpoint import ADAPTER_CONFIG, load_checkpoint, resolve_model_dir, save_checkpoint
    from ..errors import InputError

    if not (resolve_model_dir(model) / ADAPTER_CONFIG).exists():
        raise InputError(f"{model}: not a LoRA adapter folder (no {ADAPTER_CONFIG})")
    ckpt = load_checkpoint(model)
    info = ckpt.meta.get("adapter", {})
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("adapter", "hangpt_version")}
    meta["merged_adapter"] = {"path": str(model), "base": info.get("base")}
    save_checkpoint(out, ckpt.model, ckpt.tokenizer, meta, extra_tensors=ckpt.extra_tensors,
                    generation_config=ckpt.generation_config, extra_config=info.get("extra_config"))
    log(f"merged {model} into its base ({info.get('base', 'named in adapter_config.json')})")
    click.echo(f"full model written to {out}")
