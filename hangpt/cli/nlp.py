"""`hangpt nlp`: the classic NLP of the course (morphology, frequencies, TF-IDF, word2vec, baselines).

kiwipiepy, scikit-learn, gensim and wordcloud are imported inside the commands, so `hangpt nlp
--help` starts instantly.
"""

from __future__ import annotations

import click

from ..nlp.morphology import KEEP
from .options import log, print_evaluation, print_json

_STOPWORDS_HELP = "Drop these words: `ko` (the Korean list shipped with hangpt), `none`, or a file with one word per line."
_DATA_HELP = "Text files or folders (.txt, .gz; one document per line); TSV/CSV files with --text-column."


def _tokenization_options(keep: str, stopwords: str):
    """How text becomes words, shared by the commands that count or embed words."""
    def decorate(f):
        options = [
            click.option("--stem", is_flag=True, help="Verbs and adjectives in dictionary form (들어가 -> 들어가다)."),
            click.option("--keep", type=click.Choice(KEEP), default=keep, show_default=True,
                         help="Morphemes kept: all, content (no particles, endings, affixes, punctuation), nouns."),
            click.option("--stopwords", default=stopwords, show_default=True, help=_STOPWORDS_HELP),
        ]
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def _tokenization(stem: bool, keep: str, stopwords: str) -> dict:
    """The tokenize() settings, as stored with a word2vec model (stopwords as the word list)."""
    from ..nlp.morphology import load_stopwords

    return {"stem": stem, "keep": keep, "stopwords": sorted(load_stopwords(stopwords))}


def _read_corpus(data, text_column) -> list[str]:
    from ..data.shards import iter_corpus

    docs = list(iter_corpus(data, text_column))
    log(f"{len(docs)} documents")
    return docs


@click.group()
def nlp():
    """Korean morphology, word frequencies, TF-IDF, word2vec and classic classifiers (before GPT)."""


# -- morphology ---------------------------------------------------------------------------------


@nlp.command()
@click.option("--text", "texts", multiple=True, required=True, help="Text to analyse (repeatable).")
@click.option("--pos", is_flag=True, help="Show each morpheme's part-of-speech tag (아버지/NNG).")
@click.option("--clean", is_flag=True, help="First keep only Hangul and spaces (the lecture's regex clean-up).")
@_tokenization_options(keep="all", stopwords="none")
@click.option("--json", "as_json", is_flag=True, help="Print every morpheme's form, tag and lemma as JSON.")
def morphs(texts, pos, clean, stem, keep, stopwords, as_json):
    """Split Korean text into morphemes with kiwipiepy: one line per text."""
    from ..nlp.morphology import analyze, clean as clean_text, load_stopwords, select

    stop = load_stopwords(stopwords)
    analyses = analyze([clean_text(t) if clean else t for t in texts])
    kept = [select(ms, stem=stem, keep=keep, stopwords=stop) for ms in analyses]
    if as_json:
        print_json({"texts": [{"text": t, "morphs": [vars(m) for m in ms]} for t, ms in zip(texts, kept)]})
        return
    for ms in kept:
        words = [m.lemma if stem else m.form for m in ms]
        click.echo(" ".join(f"{w}/{m.tag}" if pos else w for w, m in zip(words, ms)))


# -- frequencies --------------------------------------------------------------------------------


@nlp.command()
@click.option("--data", multiple=True, required=True, help=_DATA_HELP)
@click.option("--text-column", default=None, help="Column of TSV/CSV files to read (e.g. NSMC's document).")
@click.option("--top", type=click.IntRange(min=1), default=30, show_default=True, help="How many words to list.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Bar chart of the top words (PNG).")
@click.option("--wordcloud", type=click.Path(dir_okay=False), default=None, help="Word cloud picture (PNG).")
@_tokenization_options(keep="content", stopwords="ko")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def freq(data, text_column, top, out, wordcloud, stem, keep, stopwords, as_json):
    """The most frequent words (morphemes) of a corpus; a bar chart and a word cloud."""
    from ..nlp.frequencies import count_words, plot_top, word_cloud
    from ..nlp.morphology import tokenize

    tokens = tokenize(_read_corpus(data, text_column), **_tokenization(stem, keep, stopwords))
    counts = count_words(tokens)
    best = counts.most_common(top)
    if out:
        log(f"bar chart written to {plot_top(best, out)}")
    if wordcloud:
        log(f"word cloud written to {word_cloud(counts, wordcloud)}")
    if as_json:
        print_json({"tokens": counts.total(), "distinct": len(counts), "top": [{"word": w, "count": c} for w, c in best]})
        return
    click.echo(f"{counts.total()} words, {len(counts)} distinct")
    for rank, (word, count) in enumerate(best, start=1):
        click.echo(f"{rank:>4}  {word}  {count}")


# -- TF-IDF -------------------------------------------------------------------------------------

_MAX_SHOWN = 20  # terms/documents beyond this are summarised instead of printed in full


@nlp.command()
@click.option("--data", type=click.Path(dir_okay=False), default=None, help="Text file: one document per non-empty line.")
@click.option("--text", "texts", multiple=True, help="A document (repeatable), instead of --data.")
@click.option("--tokens", type=click.Choice(["words", "morphs"]), default="words", show_default=True,
              help="Terms: whitespace-separated words, or content morphemes (kiwipiepy) without stopwords.")
@click.option("--query", default=None, help="Rank the documents by cosine similarity to this text.")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, help="Top terms per document.")
@click.option("--norm/--no-norm", default=True, show_default=True,
              help="Scale each document's vector to length 1 (scikit-learn's default) or show raw tf x idf.")
@click.option("--json", "as_json", is_flag=True, help="Print terms, df, idf, the matrix and similarities as JSON.")
def tfidf(data, texts, tokens, query, top, norm, as_json):
    """TF-IDF of a few documents: df, idf, the matrix, top terms per document, cosine similarity."""
    from ..data.text import iter_documents
    from ..errors import InputError
    from ..nlp.morphology import load_stopwords, tokenize
    from ..nlp.tfidf import cosine, fit_tfidf

    docs = list(texts) + (list(iter_documents([data])) if data else [])
    if len(docs) < 2:
        raise InputError("give at least 2 documents (--data FILE with one per line, or --text repeated)")

    def split(ds: list[str]) -> list[list[str]]:
        if tokens == "words":
            return [d.split() for d in ds]
        # content morphemes without stopwords: particles and endings would top every document
        return tokenize(ds, keep="content", stopwords=load_stopwords("ko"))

    model = fit_tfidf(split(docs), norm="l2" if norm else None)
    similarity = cosine(model.matrix, model.matrix)
    ranked = None
    if query is not None:
        scores = cosine(model.transform(split([query])), model.matrix)[0]
        ranked = sorted(enumerate(scores.tolist()), key=lambda p: -p[1])
    if as_json:
        print_json({"terms": model.terms, "df": model.df.tolist(), "idf": model.idf.round(6).tolist(),
                    "tfidf": model.matrix.round(6).tolist(), "cosine": similarity.round(6).tolist(),
                    "top_terms": [model.top_terms(i, top) for i in range(len(docs))],
                    **({"query": [{"doc": i + 1, "cosine": round(s, 6)} for i, s in ranked]} if ranked else {})})
        return
    _print_tfidf(model, docs, similarity, top, norm)
    if ranked is not None:
        click.echo(f"\nquery: {query}")
        for i, score in ranked[:_MAX_SHOWN]:
            click.echo(f"  {score:.4f}  d{i + 1}  {docs[i][:60]}")


def _print_tfidf(model, docs, similarity, top, norm) -> None:
    n, v = model.matrix.shape
    click.echo(f"{n} documents, {v} terms; idf = ln((1 + n) / (1 + df)) + 1")
    shown = sorted(range(v), key=lambda j: (-model.df[j], j))[:_MAX_SHOWN]  # most widespread terms first
    click.echo("term" + " " * 8 + "df     idf" + (f"   ({v - len(shown)} more terms not shown)" if v > len(shown) else ""))
    for j in shown:
        click.echo(f"{model.terms[j]:<10}{model.df[j]:>4}  {model.idf[j]:.4f}")
    if v <= _MAX_SHOWN and n <= _MAX_SHOWN:
        click.echo("\nTF-IDF" + (" (each row scaled to length 1)" if norm else " (tf x idf)"))
        click.echo(" " * 4 + "".join(f"{t:>8}" for t in model.terms))
        for i, row in enumerate(model.matrix):
            click.echo(f"d{i + 1:<3}" + "".join(f"{x:>8.4f}" for x in row))
    click.echo("\ntop terms")
    for i in range(min(n, _MAX_SHOWN)):
        click.echo(f"d{i + 1:<3}" + ", ".join(f"{t} {w:.4f}" for t, w in model.top_terms(i, top)))
    if n <= _MAX_SHOWN:
        click.echo("\ncosine similarity")
        for i, row in enumerate(similarity):
            click.echo(f"d{i + 1:<3}" + "".join(f"{x:>7.3f}" for x in row))


# -- word2vec -----------------------------------------------------------------------------------


@nlp.group(name="word2vec")
def word2vec_group():
    """Train word vectors (CBOW or skip-gram) on morphemes; nearest words, analogies, a 2-D picture."""


@word2vec_group.command("train")
@click.option("--data", multiple=True, required=True, help=_DATA_HELP)
@click.option("--text-column", default=None, help="Column of TSV/CSV files to read (e.g. NSMC's document).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the model to.")
@click.option("--sg", type=click.Choice(["0", "1"]), default="0", show_default=True, help="0: CBOW, 1: skip-gram.")
@click.option("--vector-size", type=click.IntRange(min=1), default=100, show_default=True, help="Dimensions per word.")
@click.option("--window", type=click.IntRange(min=1), default=5, show_default=True, help="Context words on each side.")
@click.option("--min-count", type=click.IntRange(min=1), default=5, show_default=True, help="Ignore rarer words.")
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True, help="Passes over the corpus.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Training threads [all cores; 1 = repeatable].")
@_tokenization_options(keep="content", stopwords="ko")
def word2vec_train(data, text_column, out, sg, vector_size, window, min_count, epochs, seed, workers, stem, keep,
                   stopwords):
    """Train word2vec on the morphemes of a corpus."""
    import time

    from ..nlp.morphology import tokenize
    from ..nlp.word2vec import save_word2vec, train_word2vec

    settings = _tokenization(stem, keep, stopwords)
    t0 = time.perf_counter()
    sentences = tokenize(_read_corpus(data, text_column), **settings)
    log(f"morphemes analysed in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    model = train_word2vec(sentences, sg=int(sg), vector_size=vector_size, window=window, min_count=min_count,
                           epochs=epochs, seed=seed, workers=workers)
    seconds = time.perf_counter() - t0
    save_word2vec(model, out, settings)
    click.echo(f"word2vec ({'skip-gram' if sg == '1' else 'CBOW'}) written to {out}: {len(model.wv)} words x "
               f"{vector_size} dimensions, {model.corpus_total_words} training words, {seconds:.1f} s")


@word2vec_group.command("similar")
@click.option("--model", required=True, type=click.Path(file_okay=False), help="word2vec folder.")
@click.option("--word", "words", multiple=True, required=True, help="Word to find neighbours of (repeatable: added).")
@click.option("--minus", multiple=True, help="Word whose vector is subtracted (analogy: --word 왕 --word 여자 --minus 남자).")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="How many words.")
@click.option("--json", "as_json", is_flag=True, help="Print the words and similarities as JSON.")
def word2vec_similar(model, words, minus, top, as_json):
    """Nearest words by cosine similarity, or the answer to an analogy a - b + c."""
    from ..nlp.word2vec import load_word2vec, most_similar

    wv, _ = load_word2vec(model)
    result = most_similar(wv, list(words), list(minus), top)
    if as_json:
        print_json({"similar": [{"word": w, "cosine": round(s, 6)} for w, s in result]})
        return
    click.echo(" + ".join(words) + "".join(f" - {w}" for w in minus))
    for word, score in result:
        click.echo(f"  {score:.4f}  {word}")


@word2vec_group.command("plot")
@click.option("--model", required=True, type=click.Path(file_okay=False), help="word2vec folder.")
@click.option("--words", required=True, help="Comma-separated words to draw (at least 3).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Picture to write (PNG).")
def word2vec_plot(model, words, out):
    """The chosen words' vectors projected to 2-D with PCA."""
    from ..nlp.word2vec import load_word2vec, plot_projection

    wv, _ = load_word2vec(model)
    path = plot_projection(wv, [w.strip() for w in words.split(",") if w.strip()], out)
    click.echo(f"PCA picture written to {path}")


# -- baselines ----------------------------------------------------------------------------------


@nlp.command("classify-baseline")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Labeled training TSV (NSMC: id, document, label) or CSV with a header row.")
@click.option("--test", "test_file", required=True, type=click.Path(dir_okay=False), help="Labeled test file.")
@click.option("--features", type=click.Choice(["tfidf-morphs", "tfidf-char", "w2v-mean"]), default="tfidf-morphs",
              show_default=True, help="TF-IDF of morphemes or of character n-grams, or mean word2vec vectors.")
@click.option("--w2v", type=click.Path(file_okay=False), default=None,
              help="With w2v-mean: a word2vec folder to use instead of training one on --data.")
@click.option("--text-column", default="document", show_default=True, help="Column with the text.")
@click.option("--label-column", default="label", show_default=True, help="Column with the label.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Save the trained model (joblib).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--json", "as_json", is_flag=True, help="Print accuracy and confusion matrix as JSON.")
def classify_baseline(data, test_file, features, w2v, text_column, label_column, out, seed, as_json):
    """Train features + logistic regression, then print test accuracy and the confusion matrix
    (as `hangpt classify eval` does, to compare with the GPT classifier)."""
    from ..data.classification import read_labeled_texts
    from ..nlp.baselines import evaluate_baseline, train_baseline
    from ..nlp.word2vec import load_word2vec

    train = read_labeled_texts(data, text_column=text_column, label_column=label_column)
    test = read_labeled_texts(test_file, text_column=text_column, label_column=label_column)
    log(f"{len(train.texts)} training texts, {len(test.texts)} test texts")
    wv, tokenization = load_word2vec(w2v) if w2v else (None, {})
    baseline = train_baseline(train.texts, train.labels, features, wv=wv, tokenization=tokenization.get("tokenization"),
                              seed=seed, log=log)
    if out:
        import joblib

        joblib.dump(baseline, out)
        log(f"model written to {out}")
    result = evaluate_baseline(baseline, test.texts, test.labels, str(test_file))
    print_evaluation({**result, "labels": baseline.labels, "skipped_empty": test.skipped_empty, **baseline.info},
                     as_json)
