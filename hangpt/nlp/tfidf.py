"""TF-IDF with scikit-learn, on token lists we make ourselves (words, morphemes or characters).

tf(t, d) = how often term t occurs in document d; df(t) = how many of the n documents contain t;
idf(t) = ln((1 + n) / (1 + df(t))) + 1 (scikit-learn's smoothed form: as if one extra document
held every term once, so no division by zero, and the +1 keeps terms found everywhere from
vanishing). A document's vector is tf x idf, scaled to length 1 (norm="l2") so that long and short
documents compare by cosine similarity, which is then just a dot product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Tfidf:
    terms: list[str]  # the vocabulary, column order (sorted)
    df: np.ndarray  # documents containing each term
    idf: np.ndarray
    matrix: np.ndarray  # (documents, terms), dense: this module is for small, readable examples
    vectorizer: object  # the fitted sklearn TfidfVectorizer, to transform queries

    def top_terms(self, row: int, k: int = 5) -> list[tuple[str, float]]:
        """The k terms with the largest weight in a document (ties in vocabulary order)."""
        order = np.argsort(-self.matrix[row], kind="stable")[:k]
        return [(self.terms[j], float(self.matrix[row, j])) for j in order if self.matrix[row, j] > 0]

    def transform(self, token_lists: list[list[str]]) -> np.ndarray:
        return self.vectorizer.transform(token_lists).toarray()


def vectorizer(norm: str | None = "l2", **options):
    """A TfidfVectorizer over documents given as token lists (tokenization is ours, not sklearn's)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(tokenizer=_identity, preprocessor=_identity, token_pattern=None, lowercase=False,
                           norm=norm, **options)


def _identity(tokens: list[str]) -> list[str]:  # module-level, so fitted vectorizers pickle
    return tokens


def fit_tfidf(token_lists: list[list[str]], norm: str | None = "l2") -> Tfidf:
    vec = vectorizer(norm=norm)
    matrix = vec.fit_transform(token_lists)
    df = np.asarray((matrix > 0).sum(axis=0)).ravel()
    return Tfidf(list(vec.get_feature_names_out()), df, vec.idf_, matrix.toarray(), vec)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of a with every row of b."""
    from sklearn.metrics.pairwise import cosine_similarity

    return cosine_similarity(a, b)
