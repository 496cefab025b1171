"""`hangpt sft`, `hangpt chat` and `hangpt classify train|eval|predict`."""

from __future__ import annotations

import click

from .options import (Number, device_option, generation_config_from_options, generation_options, log, lora_options,
                      print_evaluation, print_json, require_model, train_config, training_options)


# -- sft ----------------------------------------------------------------------------------------


@click.command()
@click.option("--model", default=None, help="Pretrained checkpoint folder (or hub id) to start from.")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Q/A CSV/TSV (ChatbotData), prompt/completion JSON(L) (KoChatGPT) or messages JSONL.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the chat model to.")
@click.option("--template", default=None,
              help="Chat template: default (role tokens), kogpt2 (<usr>/<sys>) or alpaca-ko "
                   "[default: the model's own, else default].")
@click.option("--question-column", default="Q", show_default=True, help="CSV/TSV column with the question.")
@click.option("--answer-column", default="A", show_default=True, help="CSV/TSV column with the answer.")
@click.option("--loss", type=click.Choice(["answer", "all"]), default="answer", show_default=True,
              help="Learn the answers only, or every token (the KoGPT2 lab's labels=input_ids).")
@training_options
@lora_options
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON.")
def sft(model, data, out, template, question_column, answer_column, loss, as_json, **opts):
    """Fine-tune a GPT into a chat model; the loss is on the answers (and their end token) only.

    Defaults: 3 epochs, batch 16, lr 3e-4, --max-length the model's context, 10% held out."""
    from ..data.conversations import read_conversations
    from ..train.sft import train_sft

    require_model(model, opts["resume"])
    conversations = read_conversations(data, question_column=question_column, answer_column=answer_column)
    log(f"{len(conversations)} conversations from {data}{conversations.skipped_note()}")
    cfg = train_config(out, opts, batch_size=16, lr=3e-4, default_epochs=3)
    val_fraction = 0.1 if opts["val_fraction"] is None else opts["val_fraction"]
    summary = train_sft(model, conversations, cfg, template_name=template, max_length=opts["max_length"],
                      val_fraction=val_fraction, loss=loss, log=log)
    if as_json:
        print_json({"out": out, **summary})
    else:
        final = summary["final"]
        scored = "answer" if loss == "answer" else "token"
        val = f", validation {scored} loss {final['val_loss']:.4f}" if "val_loss" in final else ""
        click.echo(f"chat model written to {out}: {summary['steps']} steps, train loss {final.get('loss', float('nan')):.4f}{val}")


# -- chat ---------------------------------------------------------------------------------------

# chat answers read better sampled; any flag given, or the model's generation_config.json, wins
_CHAT_DEFAULTS = {"max_new_tokens": 128, "do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.95,
                  "repetition_penalty": 1.1}
_CHAT_HELP = "commands: /reset (forget the conversation), /system TEXT (set the system message), /quit"


@click.command()
@click.option("--model", required=True, help="Chat model folder (its chat template is used to format prompts).")
@click.option("--system", default=None, help="System message for the conversation.")
@generation_options
@device_option
def chat(model, system, device, **options):
    """Multi-turn chat in the terminal, answers streamed as they are generated.

    Reads one message per line from standard input (so it also works piped); the oldest turns are
    dropped when the conversation no longer fits the model's context.

    \b
    /reset         forget the conversation
    /system TEXT   set the system message (empty TEXT removes it)
    /quit          leave (or Ctrl-D)
    """
    import sys

    from ..checkpoint import load_checkpoint
    from ..engine import Engine
    from ..templates import fit_conversation, prepare_tokenizer, template_for

    ckpt = load_checkpoint(model)
    ckpt.model.to(device)
    template = template_for(ckpt.meta, ckpt.tokenizer)
    tokenizer = ckpt.tokenizer
    prepare_tokenizer(template, tokenizer, ckpt.model)
    n_positions = ckpt.model.config.context_length
    config = generation_config_from_options(options, {**_CHAT_DEFAULTS, **ckpt.generation_config},
                                            stop=template.stop_strings(tokenizer))
    config.max_new_tokens = min(config.max_new_tokens, n_positions - 1)
    engine = Engine(ckpt.model, tokenizer)
    interactive = sys.stdin.isatty()
    log(f"chatting with {model} (template {template.name}); {_CHAT_HELP}")
    history: list[dict] = []
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, rest = line.partition(" ")
            if command == "/quit":
                break
            if command == "/reset":
                history = []
                log("(conversation reset)")
            elif command == "/system":
                system = rest.strip() or None
                log(f"(system message {'set' if system else 'removed'})")
            else:
                log(f"unknown command {command}; {_CHAT_HELP}")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        ids, dropped = fit_conversation(template, tokenizer, messages, n_positions - config.max_new_tokens)
        if dropped:
            history = history[dropped:]
            log(f"(the {dropped} oldest messages no longer fit the context and were dropped)")
        answer = []
        for event in engine.stream(ids, config):
            answer.append(event.text)
            click.echo(event.text, nl=False)
        click.echo()
        history.append({"role": "assistant", "content": "".join(answer)})


# -- classify -----------------------------------------------------------------------------------


def _data_options(f):
    f = click.option("--label-column", default="label", show_default=True, help="Column with the label.")(f)
    f = click.option("--text-column", default="document", show_default=True, help="Column with the text.")(f)
    return f


@click.group()
def classify():
    """GPT + linear head on the last token: train, evaluate (accuracy, confusion matrix), predict."""


@classify.command("train")
@click.option("--model", default=None, help="Pretrained checkpoint folder (or hub id) to start from.")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="TSV (NSMC: id, document, label; quoting off) or CSV with a header row.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the classifier to.")
@_data_options
@click.option("--dropout", type=Number(0, 1, max_open=True), default=0.1, show_default=True,
              help="Dropout while fine-tuning (GPT-1's value).")
@click.option("--lm-coef", type=Number(min=0), default=0.5, show_default=True,
              help="Weight of GPT-1's auxiliary next-token loss on the texts (0 = off).")
@training_options
@lora_options
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON.")
def classify_train(model, data, out, text_column, label_column, dropout, lm_coef, as_json, **opts):
    """Fine-tune GPT + a linear head on labeled texts (any number of labels, any label strings).

    Defaults: 1 epoch, batch 32, lr 2e-4, --max-length 128, 5% held out; GPT-1's recipe of
    dropout 0.1 and an auxiliary language-modelling loss weighted 0.5."""
    from ..data.classification import read_labeled_texts
    from ..train.classify import train_classifier

    require_model(model, opts["resume"])
    rows = read_labeled_texts(data, text_column=text_column, label_column=label_column)
    log(f"{len(rows.texts)} labeled texts from {data}"
         + (f" ({rows.skipped_empty} rows with an empty text skipped)" if rows.skipped_empty else ""))
    cfg = train_config(out, opts, batch_size=32, lr=2e-4, default_epochs=1)
    val_fraction = 0.05 if opts["val_fraction"] is None else opts["val_fraction"]
    summary = train_classifier(model, rows.texts, rows.labels, cfg, max_length=opts["max_length"] or 128,
                                 val_fraction=val_fraction, dropout=dropout, lm_coef=lm_coef, log=log)
    summary["skipped_empty"] = rows.skipped_empty
    if as_json:
        print_json({"out": out, **summary})
    else:
        final = summary["final"]
        val = f", validation accuracy {final['val_acc']:.2%}" if "val_acc" in final else ""
        click.echo(f"classifier written to {out}: {summary['steps']} steps{val}")


@classify.command("eval")
@click.option("--model", required=True, help="Classifier checkpoint folder.")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Labeled TSV/CSV file.")
@_data_options
@click.option("--max-length", type=click.IntRange(min=1), default=128, show_default=True, help="Tokens per text.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print accuracy and confusion matrix as JSON.")
def classify_eval(model, data, text_column, label_column, max_length, batch_size, device, as_json):
    """Accuracy and confusion matrix on labeled data."""
    from ..data.classification import read_labeled_texts
    from ..train.classify import encode_texts, evaluate, label_indices, load_classifier

    clf = load_classifier(model)
    clf.model.to(device)
    rows = read_labeled_texts(data, text_column=text_column, label_column=label_column)
    seqs, _ = encode_texts(clf.tokenizer, rows.texts, min(max_length, clf.model.gpt.config.context_length))
    result = evaluate(clf.model, seqs, label_indices(rows.labels, clf.labels, str(data)), clf.tokenizer.pad_id,
                      batch_size)
    result.update(labels=clf.labels, skipped_empty=rows.skipped_empty)
    print_evaluation(result, as_json)


@classify.command("predict")
@click.option("--model", required=True, help="Classifier checkpoint folder.")
@click.option("--text", "texts", multiple=True, help="Text to classify (repeatable).")
@click.option("--data", default=None, type=click.Path(dir_okay=False), help="TSV/CSV file of texts to classify.")
@click.option("--text-column", default="document", show_default=True, help="Column with the text (with --data).")
@click.option("--max-length", type=click.IntRange(min=1), default=128, show_default=True, help="Tokens per text.")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every prediction.")
def classify_predict(model, texts, data, text_column, max_length, device, as_json):
    """Print each text's most likely label and its probability."""
    from ..data.classification import read_labeled_texts
    from ..errors import InputError
    from ..train.classify import encode_texts, load_classifier, predict_proba

    texts = list(texts)
    if data:
        texts += read_labeled_texts(data, text_column=text_column, label_column=None).texts
    if not texts:
        raise InputError("give --text or --data")
    clf = load_classifier(model)
    clf.model.to(device)
    seqs, _ = encode_texts(clf.tokenizer, texts, min(max_length, clf.model.gpt.config.context_length))
    probs = predict_proba(clf.model, seqs, clf.tokenizer.pad_id)
    best = probs.argmax(-1).tolist()
    predictions = [{"text": t, "label": clf.labels[b], "probability": round(p[b].item(), 6),
                    "probabilities": {label: round(x, 6) for label, x in zip(clf.labels, p.tolist())}}
                   for t, b, p in zip(texts, best, probs)]
    if as_json:
        print_json({"predictions": predictions})
        return
    for p in predictions:
        click.echo(f"{p['probability']:.2%} label {p['label']}: {p['text']}")
