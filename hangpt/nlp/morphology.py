"""Korean morphological analysis with kiwipiepy (no Java, unlike KoNLPy's Okt).

Korean glues particles and endings onto words ("아버지가" = 아버지 + 가), so counting or embedding
whitespace words would treat every inflected form as a different word. Splitting into morphemes,
optionally putting verbs back into their dictionary form (stemming: 들어가 -> 들어가다) and dropping
stopwords, gives the units the classic methods count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Iterable

from ..errors import InputError

BUILTIN_STOPWORDS = Path(__file__).with_name("stopwords-ko.txt")
# Part-of-speech filters (Sejong tags, as kiwipiepy writes them; "VA-I" is an irregular adjective).
NOUN_TAGS = ("NNG", "NNP")  # common and proper nouns
FUNCTION_TAGS = ("J", "E", "XS", "XP", "VCP", "SF", "SP", "SS", "SE", "SO", "SN")  # prefixes of grammatical tags:
# particles, endings, affixes, the copula 이다, punctuation and numbers, which carry little content
KEEP = ("all", "content", "nouns")
_NOT_HANGUL = re.compile(r"[^ㄱ-ㅎㅏ-ㅣ가-힣 ]+")


@dataclass(frozen=True)
class Morph:
    form: str  # as it appears: 들어가
    tag: str  # part of speech: VV (verb)
    lemma: str  # dictionary form: 들어가다 (same as form except for verbs and adjectives)


def clean(text: str) -> str:
    """The lecture's regex clean-up: keep Hangul (syllables and jamo) and spaces, squeeze spaces."""
    return " ".join(_NOT_HANGUL.sub(" ", text).split())


@cache
def _kiwi():
    from kiwipiepy import Kiwi

    return Kiwi(num_workers=-1)  # batches of texts are analysed on every core


def analyze(texts: Iterable[str]) -> list[list[Morph]]:
    """The morphemes of each text (one batch call: much faster than a text at a time)."""
    return [[Morph(t.form, t.tag, t.lemma) for t in tokens] for tokens in _kiwi().tokenize(list(texts))]


def load_stopwords(spec: str | None) -> frozenset[str]:
    """`ko` for the list shipped with hangpt, or a file with one word per line (# comments); `none`/None: none."""
    if spec is None or spec == "none":
        return frozenset()
    path = BUILTIN_STOPWORDS if spec == "ko" else Path(spec)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--stopwords {spec}: cannot read it ({e})") from None
    return frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))


def _kept(tag: str, keep: str) -> bool:
    if keep == "nouns":
        return tag in NOUN_TAGS
    return keep == "all" or not tag.startswith(FUNCTION_TAGS)


def select(morphs: list[Morph], *, stem: bool = False, keep: str = "all",
           stopwords: frozenset[str] = frozenset()) -> list[Morph]:
    """Morphemes kept: `all`, `content` (no particles, endings, affixes, punctuation) or `nouns`,
    without stopwords (matched on the form, and on the lemma when stemming)."""
    if keep not in KEEP:
        raise InputError(f"--keep {keep}: choose one of {', '.join(KEEP)}")
    return [m for m in morphs if _kept(m.tag, keep) and m.form not in stopwords
            and not (stem and m.lemma in stopwords)]


def tokenize(texts: Iterable[str], *, stem: bool = False, keep: str = "all", stopwords: Iterable[str] = (),
             hangul_only: bool = True) -> list[list[str]]:
    """Each text as the list of words the classic methods count: morphemes (lemmas with stem).

    hangul_only applies `clean` first (punctuation, digits and Latin letters go)."""
    return words(analyze(clean(t) if hangul_only else t for t in texts), stem=stem, keep=keep, stopwords=stopwords)


def words(analyses: list[list[Morph]], *, stem: bool = False, keep: str = "all",
          stopwords: Iterable[str] = ()) -> list[list[str]]:
    """tokenize() on texts already analysed: one analysis can serve several settings."""
    stopwords = frozenset(stopwords)
    return [[m.lemma if stem else m.form for m in select(ms, stem=stem, keep=keep, stopwords=stopwords)]
            for ms in analyses]
