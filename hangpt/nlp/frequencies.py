"""Word frequencies of a corpus as a table, a bar chart and a word cloud.

The first look at a corpus: which words dominate it. Counted on morphemes (see morphology), so
"영화가", "영화를" and "영화는" all count as 영화.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..plotting import hangul_font_path, plot_labels, pyplot, save_figure, warn_without_font


def count_words(token_lists: list[list[str]]) -> Counter:
    return Counter(w for tokens in token_lists for w in tokens)


def plot_top(top: list[tuple[str, int]], path: str | Path) -> Path:
    """Horizontal bars, the most frequent word on top."""
    plt = pyplot()
    words, counts = zip(*reversed(top)) if top else ((), ())
    fig, ax = plt.subplots(figsize=(7, 1 + 0.28 * len(top)))
    ax.barh(plot_labels(list(words)), counts, color="tab:blue")
    ax.set_xlabel("count")
    ax.set_title(f"top {len(top)} words")
    warn_without_font()
    return save_figure(fig, path)


def word_cloud(counts: Counter, path: str | Path, max_words: int = 200, seed: int = 0) -> Path:
    """A word cloud (word size ~ frequency); Hangul needs a Korean font, else words are escaped."""
    from wordcloud import WordCloud

    font = hangul_font_path()
    words = counts.most_common(max_words)
    labels = plot_labels([w for w, _ in words])
    cloud = WordCloud(font_path=font, width=800, height=500, background_color="white", max_words=max_words,
                      random_state=seed, collocations=False, prefer_horizontal=1.0)  # sideways Hangul reads badly
    cloud.generate_from_frequencies({label: c for label, (_, c) in zip(labels, words)})
    warn_without_font()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cloud.to_file(str(path))
    return path
