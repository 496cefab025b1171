"""word2vec with gensim: dense word vectors learned from which words appear near which.

A one-hot vector is as long as the vocabulary and every two words are equally far apart; word2vec
learns short vectors (e.g. 100 numbers) where words used in similar contexts end up close. CBOW
(sg=0) predicts a word from its neighbours within `window`; skip-gram (sg=1) predicts the
neighbours from the word (slower, better for rare words). Similar words are then nearest
neighbours by cosine, and relations become directions: 왕 - 남자 + 여자 ~ 여왕.

A model folder holds gensim's `word2vec.model` and `hangpt.json`, the tokenization the model was
trained with, so every later use splits text the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..plotting import plot_labels, pyplot, save_figure, warn_without_font

MODEL_FILE = "word2vec.model"
SETTINGS_FILE = "hangpt.json"


def train_word2vec(sentences: list[list[str]], *, sg: int = 0, vector_size: int = 100, window: int = 5,
                   min_count: int = 5, epochs: int = 5, seed: int = 1, workers: int | None = None):
    """A gensim Word2Vec trained on token lists. workers=1 makes the run exactly repeatable."""
    from gensim.models import Word2Vec

    if not any(sentences):
        raise InputError("word2vec: the corpus has no tokens to train on")
    model = Word2Vec(sentences, sg=sg, vector_size=vector_size, window=window, min_count=min_count,
                     epochs=epochs, seed=seed, workers=workers or os.cpu_count() or 1)
    if not model.wv.index_to_key:
        raise InputError(f"word2vec: no word occurs --min-count {min_count} times; lower it or add text")
    return model


def save_word2vec(model, out: str | Path, tokenization: dict) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out / MODEL_FILE))
    settings = {"tokenization": tokenization, "sg": model.sg, "vector_size": model.vector_size,
                "window": model.window, "min_count": model.min_count, "epochs": model.epochs,
                "vocabulary": len(model.wv)}
    (out / SETTINGS_FILE).write_text(json.dumps(settings, ensure_ascii=False, indent=1), encoding="utf-8")
    return out


def load_word2vec(folder: str | Path):
    """(KeyedVectors, settings) of a folder written by save_word2vec."""
    from gensim.models import Word2Vec

    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file():
        raise InputError(f"{folder}: not a word2vec folder (no {MODEL_FILE}); train one with `hangpt nlp word2vec train`")
    settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    return Word2Vec.load(str(folder / MODEL_FILE)).wv, settings


def check_known(wv, words: list[str]) -> None:
    missing = [w for w in words if w not in wv.key_to_index]
    if missing:
        raise InputError(f"not in the model's vocabulary of {len(wv)} words: {', '.join(missing)} "
                         f"(words seen fewer than min_count times are dropped; morphemes, e.g. 영화 not 영화가)")


def most_similar(wv, positive: list[str], negative: list[str] = (), topn: int = 10) -> list[tuple[str, float]]:
    """Nearest words by cosine to sum(positive) - sum(negative): plain neighbours or an analogy."""
    check_known(wv, [*positive, *negative])
    return wv.most_similar(positive=positive, negative=list(negative), topn=topn)


def mean_vectors(wv, token_lists: list[list[str]]) -> np.ndarray:
    """A text as the mean of its known words' vectors (zeros when it has none)."""
    out = np.zeros((len(token_lists), wv.vector_size), dtype=np.float32)
    for i, tokens in enumerate(token_lists):
        known = [wv.key_to_index[w] for w in tokens if w in wv.key_to_index]
        if known:
            out[i] = wv.vectors[known].mean(axis=0)
    return out


def plot_projection(wv, words: list[str], path: str | Path) -> Path:
    """The words' vectors projected onto their first two principal components (PCA), labelled."""
    from sklearn.decomposition import PCA

    check_known(wv, words)
    if len(words) < 3:
        raise InputError("--words: give at least 3 words to project")
    xy = PCA(n_components=2).fit_transform(wv[words])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(xy[:, 0], xy[:, 1], color="tab:blue")
    for (x, y), label in zip(xy, plot_labels(words)):
        ax.annotate(label, (x, y), xytext=(4, 4), textcoords="offset points")
    ax.set_title("word2vec vectors, 2-D PCA")
    warn_without_font()
    return save_figure(fig, path)
