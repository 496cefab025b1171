"""Classic text classifiers for NSMC-style data: features + logistic regression.

What the transformer has to beat. Three feature sets:
- tfidf-morphs: TF-IDF of morphemes and morpheme pairs (bigrams), from kiwipiepy's analysis;
- tfidf-char: TF-IDF of character 1-4-grams inside words, no analyser needed, robust to the
  typos and slang of reviews;
- w2v-mean: the mean word2vec vector of the morphemes (word order and counts are lost).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from . import morphology, word2vec
from .tfidf import vectorizer

FEATURES = ("tfidf-morphs", "tfidf-char", "w2v-mean")


@dataclass
class Baseline:
    features: str
    labels: list[str]  # class order of the classifier and the confusion matrix (sorted)
    classifier: object
    vectorizer: object = None  # the TF-IDF features
    wv: object = None  # the word2vec features
    tokenization: dict = field(default_factory=dict)  # morphology.tokenize settings (a word2vec model's)
    info: dict = field(default_factory=dict)  # e.g. word2vec training time

    def featurize(self, texts: list[str], tokens: list[list[str]] | None = None):
        """Feature rows of texts; `tokens`: their words, when already tokenized with self.tokenization."""
        if self.features == "tfidf-char":
            return self.vectorizer.transform(texts)
        if tokens is None:
            tokens = morphology.tokenize(texts, **self.tokenization)
        if self.features == "tfidf-morphs":
            return self.vectorizer.transform(tokens)
        return word2vec.mean_vectors(self.wv, tokens)

    def predict(self, texts: list[str]) -> list[str]:
        return [self.labels[i] for i in self.classifier.predict(self.featurize(texts))]


def train_baseline(texts: list[str], labels: list[str], features: str, *, wv=None, tokenization: dict | None = None,
                   tokens: list[list[str]] | None = None, seed: int = 0, log=lambda message: None) -> Baseline:
    """Fit the features on the training texts, then a logistic regression on them.

    For w2v-mean, word2vec is trained on the training texts unless trained vectors `wv` are given
    (with the `tokenization` they were trained with). `tokens`: the texts' words under that
    tokenization, when already computed (morpheme analysis is the slow part)."""
    import time

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if features not in FEATURES:
        raise InputError(f"--features {features}: choose one of {', '.join(FEATURES)}")
    label_set = sorted(set(labels))
    if len(label_set) < 2:
        raise InputError(f"the training data has a single label ({label_set[0]!r}); a classifier needs two or more")
    classifier = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    if features == "w2v-mean":  # dense averages vary little: put every dimension on the same scale first
        classifier = make_pipeline(StandardScaler(), classifier)
    baseline = Baseline(features, label_set, classifier, tokenization=tokenization or {})
    if features == "tfidf-char":
        baseline.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), min_df=2, sublinear_tf=True,
                                              max_features=400_000)
        x = baseline.vectorizer.fit_transform(texts)
    else:
        if tokens is None:
            log(f"analysing the morphemes of {len(texts)} texts")
            tokens = morphology.tokenize(texts, **baseline.tokenization)
        if features == "tfidf-morphs":
            baseline.vectorizer = vectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
            x = baseline.vectorizer.fit_transform(tokens)
        else:
            if wv is None:
                t0 = time.perf_counter()
                wv = word2vec.train_word2vec(tokens, sg=1, vector_size=100, window=5, min_count=2, seed=seed).wv
                baseline.info["word2vec_seconds"] = round(time.perf_counter() - t0, 1)
                log(f"word2vec (skip-gram, 100 dimensions) trained in {baseline.info['word2vec_seconds']} s")
            baseline.wv = wv
            x = word2vec.mean_vectors(wv, tokens)
    index = {label: i for i, label in enumerate(label_set)}
    baseline.classifier.fit(x, [index[label] for label in labels])
    return baseline


def evaluate_baseline(baseline: Baseline, texts: list[str], labels: list[str], where: str = "test data",
                      tokens: list[list[str]] | None = None) -> dict:
    """Accuracy and confusion matrix (rows = true label, columns = predicted), as `classify eval`."""
    unknown = sorted(set(labels) - set(baseline.labels))
    if unknown:
        raise InputError(f"{where}: labels not seen in training: {', '.join(unknown)} "
                         f"(known: {', '.join(baseline.labels)})")
    index = {label: i for i, label in enumerate(baseline.labels)}
    y = np.array([index[label] for label in labels])
    pred = baseline.classifier.predict(baseline.featurize(texts, tokens))
    n = len(baseline.labels)
    confusion = np.bincount(y * n + pred, minlength=n * n).reshape(n, n)
    return {"accuracy": float((pred == y).mean()), "n": len(labels), "confusion": confusion.tolist()}
