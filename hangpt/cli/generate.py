"""`hangpt generate`: one or more prompts through the engine, printed or streamed."""

from __future__ import annotations

import click

from .options import device_option, generation_options, print_json


@click.command()
@click.option("--model", required=True, help="Checkpoint folder (or hub id).")
@click.option("--prompt", "prompts", multiple=True, required=True,
              help="Prompt text (repeatable: several prompts are decoded together in one batch).")
@click.option("--chat", is_flag=True, help="Wrap the prompt as a user message in the checkpoint's chat template.")
@click.option("--system", default=None, help="System message (with --chat).")
@generation_options
@click.option("--max-length", type=click.IntRange(min=1), default=None,
              help="Total length of prompt + new tokens, as in transformers (--max-new-tokens wins when both are given).")
@device_option
@click.option("--stream", is_flag=True, help="Print tokens as they are generated (with --json: one JSON object per event).")
@click.option("--json", "as_json", is_flag=True, help='Print {"completions": [{"text", "token_ids", "finish_reason"}]}.')
def generate(model, prompts, chat, system, max_length, device, stream, as_json, **flags):
    """Generate text from --prompt with any decoding strategy.

    Without --do-sample decoding is greedy (beam search with --num-beams > 1), as in
    transformers; the prompt is encoded exactly as the checkpoint's tokenizer encodes it and
    generation stops at the model's eos token. Unset flags come from the checkpoint's
    generation_config.json.
    """
    from dataclasses import asdict

    from ..checkpoint import load_checkpoint
    from ..engine import Engine
    from ..errors import InputError
    from .options import generation_config_from_options

    if system is not None and not chat:
        raise InputError("--system needs --chat")
    ckpt = load_checkpoint(model)
    ckpt.model.to(device)
    tokenizer = ckpt.tokenizer
    stop: list[str] = []
    if chat:
        from ..templates import prepare_tokenizer, template_for

        template = template_for(ckpt.meta, tokenizer)
        prepare_tokenizer(template, tokenizer, ckpt.model)
        stop = template.stop_strings(tokenizer)
        head = [{"role": "system", "content": system}] if system is not None else []
        inputs = [template.encode_prompt(tokenizer, head + [{"role": "user", "content": p}]) for p in prompts]
    else:
        inputs = list(prompts)
    new_tokens_given = flags.get("max_new_tokens") is not None
    config = generation_config_from_options(flags, ckpt.generation_config, stop)
    engine = Engine(ckpt.model, tokenizer)
    inputs = [engine.encode(p) for p in inputs]
    if max_length is not None:
        _fit_max_length(config, max_length, max(len(ids) for ids in inputs), new_tokens_given)

    if stream:
        if len(inputs) * config.num_return_sequences > 1 and not as_json:
            raise InputError("--stream prints one sequence as text: use one --prompt and --num-return-sequences 1, "
                             "or add --json")
        for event in engine.stream_batch([(p, config) for p in inputs]):
            if as_json:
                print_json({k: v for k, v in asdict(event).items() if v is not None})
            else:
                click.echo(event.text, nl=False)
        if not as_json:
            click.echo()
        return

    results = engine.generate(inputs, config)
    if as_json:
        completions = []
        for i, group in enumerate(results):
            for c in group:
                item = {"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason}
                if len(results) > 1:
                    item["prompt_index"] = i
                if c.logprobs is not None:
                    item["logprobs"] = c.logprobs
                completions.append(item)
        print_json({"completions": completions})
        return
    many = sum(len(g) for g in results) > 1
    for i, group in enumerate(results):
        for k, c in enumerate(group):
            if many:
                click.echo(f"--- prompt {i + 1}, sequence {k + 1} ({c.finish_reason})")
            click.echo(c.text)


def _fit_max_length(config, max_length: int, prompt_tokens: int, new_tokens_given: bool) -> None:
    """transformers' max_length: the whole sequence, prompt included (the longest prompt of a batch)."""
    import warnings

    from ..errors import InputError

    if new_tokens_given:
        warnings.warn(f"--max-new-tokens {config.max_new_tokens} is used; --max-length {max_length} is ignored "
                      f"(as in transformers)")
        return
    if max_length <= prompt_tokens:
        raise InputError(f"--max-length {max_length}: the prompt already has {prompt_tokens} tokens "
                         f"(max_length counts the prompt; use --max-new-tokens for new tokens only)")
    config.max_new_tokens = max_length - prompt_tokens
