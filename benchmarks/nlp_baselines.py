"""The classic NLP baselines on NSMC, and word2vec training time on the Korean texts + NSMC reviews.

1. word2vec (CBOW and skip-gram, 100 dimensions, window 5, 5 epochs, all cores) on the morphemes of
   the Korean texts + the 150k NSMC training reviews (`hangpt nlp word2vec train`'s defaults:
   content morphemes, the shipped stopwords); morpheme analysis and each training timed.
2. NSMC, trained on all 150k training reviews and scored on all 50k test reviews:
   TF-IDF of morphemes (+ bigrams), TF-IDF of character 1-4-grams, and the mean of the skip-gram
   vectors from step 1, each + logistic regression (`hangpt nlp classify-baseline`).
The GPT classifier's accuracy is not measured here (that takes an hour: benchmarks/nsmc_classify.py);
the figure the README reports is printed beside the baselines, labelled as such.

    python benchmarks/nlp_baselines.py [--data-dir ../shared/data]

Last line: RESULT nlp_baselines tfidf_morphs_acc=... tfidf_char_acc=... w2v_mean_acc=... gpt_readme_acc=...
tokenize_s=... cbow_s=... skipgram_s=... (accuracies on the 50k test reviews; seconds on this machine).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from hangpt.data.classification import read_labeled_texts
from hangpt.data.shards import iter_corpus
from hangpt.nlp.baselines import evaluate_baseline, train_baseline
from hangpt.nlp.morphology import analyze, clean, load_stopwords, words
from hangpt.nlp.word2vec import train_word2vec

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
NEIGHBOURS_OF = ("영화", "배우", "재밌", "지루", "감동")


def gpt_figure_from_readme() -> float | None:
    """The GPT + head NSMC test accuracy the README reports (None when it reports none)."""
    m = re.search(r"scores (\d+\.\d+)% on the\s+50k test reviews", (ROOT / "README.md").read_text(encoding="utf-8"))
    return float(m.group(1)) / 100 if m else None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DATA, help="folder with nsmc/ and korean_text/")
    args = p.parse_args()
    nsmc, korean = args.data_dir / "nsmc", args.data_dir / "korean_text"
    train = read_labeled_texts(nsmc / "ratings_train.txt.gz")
    test = read_labeled_texts(nsmc / "ratings_test.txt.gz")
    log(f"NSMC: {len(train.texts)} training reviews, {len(test.texts)} test reviews; {os.cpu_count()} cores")

    # 1. word2vec on the Korean texts + NSMC training reviews (test reviews kept out); every text is
    # analysed once, and each baseline takes the words its tokenization keeps
    korean_docs = list(iter_corpus([*sorted(korean.glob("*.txt")), *sorted(korean.glob("*.csv"))]))
    corpus = korean_docs + train.texts
    t0 = time.perf_counter()
    analyses = analyze(clean(t) for t in corpus + test.texts)
    tokenize_s = time.perf_counter() - t0
    settings = {"stem": False, "keep": "content", "stopwords": load_stopwords("ko")}
    sentences = words(analyses[:len(corpus)], **settings)
    n_tokens = sum(map(len, sentences))
    log(f"{len(analyses)} texts analysed in {tokenize_s:.0f} s; word2vec corpus: {len(corpus)} documents, "
        f"{n_tokens} morphemes")
    nsmc_analyses = analyses[len(korean_docs):]
    tokens = {"all": words(nsmc_analyses), "content": words(nsmc_analyses, **settings)}
    train_word2vec(sentences[:2000], min_count=1, epochs=1)  # warm-up: gensim's first run pays one-time costs
    seconds, models = {}, {}
    for name, sg in (("cbow", 0), ("skipgram", 1)):
        t0 = time.perf_counter()
        models[name] = train_word2vec(sentences, sg=sg, vector_size=100, window=5, min_count=5, epochs=5)
        seconds[name] = time.perf_counter() - t0
        log(f"word2vec {name}: {len(models[name].wv)} words, {seconds[name]:.1f} s")

    # 2. NSMC baselines
    rows = []
    n = len(train.texts)
    runs = (("tfidf-morphs", {}, tokens["all"]), ("tfidf-char", {}, None),
            ("w2v-mean", {"wv": models["skipgram"].wv, "tokenization": settings}, tokens["content"]))
    for features, kwargs, words_of in runs:
        t0 = time.perf_counter()
        train_words, test_words = (words_of[:n], words_of[n:]) if words_of else (None, None)
        baseline = train_baseline(train.texts, train.labels, features, tokens=train_words, log=log, **kwargs)
        result = evaluate_baseline(baseline, test.texts, test.labels, tokens=test_words)
        rows.append((features, result["accuracy"], time.perf_counter() - t0))
        log(f"{features}: {result['accuracy']:.4f} ({rows[-1][2]:.0f} s), confusion {result['confusion']}")
    gpt = gpt_figure_from_readme()

    print(f"\nNSMC test set ({len(test.texts)} reviews), trained on {len(train.texts)} reviews")
    print("(seconds: features + logistic regression, training and test; the morpheme analysis is timed below)")
    print(f"| {'classifier':<66} | accuracy | seconds |")
    print(f"|{'-' * 68}|----------|---------|")
    names = {"tfidf-morphs": "TF-IDF of morphemes + bigrams, logistic regression",
             "tfidf-char": "TF-IDF of character 1-4-grams, logistic regression",
             "w2v-mean": "mean skip-gram word2vec vector, logistic regression"}
    for features, acc, s in rows:
        print(f"| {names[features]:<66} | {acc:8.2%} | {s:7.0f} |")
    gpt_text = f"{gpt:8.2%}" if gpt is not None else "     n/a"
    print(f"| {'GPT tiny + linear head (README figure, not measured in this run)':<66} | {gpt_text} |       - |")

    print(f"\nword2vec on the Korean texts + NSMC training reviews: {len(corpus)} documents, {n_tokens} morphemes")
    print(f"| step | seconds |\n|---|---|\n| morpheme analysis (kiwipiepy), word2vec corpus + NSMC test reviews | {tokenize_s:.1f} |")
    print(f"| CBOW training | {seconds['cbow']:.1f} |\n| skip-gram training | {seconds['skipgram']:.1f} |")
    for name, model in models.items():
        for word in NEIGHBOURS_OF:
            if word in model.wv:
                near = ", ".join(w for w, _ in model.wv.most_similar(word, topn=5))
                print(f"{name} {word}: {near}")

    acc = {features.replace("-", "_"): a for features, a, _ in rows}
    print(f"RESULT nlp_baselines tfidf_morphs_acc={acc['tfidf_morphs']:.4f} tfidf_char_acc={acc['tfidf_char']:.4f} "
          f"w2v_mean_acc={acc['w2v_mean']:.4f} gpt_readme_acc={gpt if gpt is not None else 'n/a'} "
          f"tokenize_s={tokenize_s:.1f} cbow_s={seconds['cbow']:.1f} skipgram_s={seconds['skipgram']:.1f}")


if __name__ == "__main__":
    main()
