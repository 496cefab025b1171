"""NSMC sentiment: a tiny pretrained GPT + linear head against TF-IDF + logistic regression.

Both are trained on the full 150k training reviews and scored on all 50k test reviews, in the same
run. The GPT is fine-tuned within a time budget (default 30 minutes) on this machine's CPU.

    python benchmarks/nsmc_classify.py --model /tmp/pt_ko --time-budget 30

Last line: RESULT nsmc_classify gpt_acc=... tfidf_acc=... ratio=... (ratio = gpt_acc / tfidf_acc).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from hangpt.data.classification import read_labeled_texts
from hangpt.train.classify import encode_texts, evaluate, label_indices, load_classifier, train_classifier
from hangpt.train.loop import TrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nsmc"


def tfidf_baseline(train, test) -> tuple[float, float]:
    """(accuracy, seconds): char 1-4-grams within word boundaries, which suit Korean's agglutination."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), min_df=2, sublinear_tf=True, max_features=400_000)
    x_train = vec.fit_transform(train.texts)
    clf = LogisticRegression(C=2.0, max_iter=2000)
    clf.fit(x_train, train.labels)
    acc = float((clf.predict(vec.transform(test.texts)) == test.labels).mean())
    return acc, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="/tmp/pt_ko", help="pretrained checkpoint to fine-tune")
    p.add_argument("--train-file", default=str(DATA / "ratings_train.txt.gz"))
    p.add_argument("--test-file", default=str(DATA / "ratings_test.txt.gz"))
    p.add_argument("--out", default="/tmp/nsmc_classifier")
    p.add_argument("--time-budget", type=float, default=30.0, help="minutes of GPT fine-tuning")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.1, help="GPT-1's fine-tuning dropout")
    p.add_argument("--lm-coef", type=float, default=0.5, help="weight of GPT-1's auxiliary LM loss (0 = off)")
    p.add_argument("--skip-tfidf", action="store_true")
    args = p.parse_args()

    import numpy as np

    train = read_labeled_texts(args.train_file)
    test = read_labeled_texts(args.test_file)
    print(f"train {len(train.texts)} reviews ({train.skipped_empty} empty skipped), "
          f"test {len(test.texts)} ({test.skipped_empty} empty skipped); torch threads {torch.get_num_threads()}",
          file=sys.stderr)

    tfidf_acc, tfidf_s = float("nan"), 0.0
    if not args.skip_tfidf:
        train.labels, test.labels = np.array(train.labels), np.array(test.labels)
        tfidf_acc, tfidf_s = tfidf_baseline(train, test)
        train.labels, test.labels = list(train.labels), list(test.labels)
        print(f"tfidf + logistic regression: {tfidf_acc:.4f} ({tfidf_s:.0f} s)", file=sys.stderr)

    cfg = TrainConfig(out=Path(args.out), batch_size=args.batch_size, lr=args.lr, time_budget=args.time_budget,
                      eval_every=2000, save_every=2000, log_every=50)
    t0 = time.perf_counter()
    summary = train_classifier(args.model, train.texts, train.labels, cfg, max_length=args.max_length,
                                 val_fraction=0.01, dropout=args.dropout, lm_coef=args.lm_coef,
                                 log=lambda m: print(m, file=sys.stderr))
    train_s = time.perf_counter() - t0
    clf = load_classifier(args.out)
    t0 = time.perf_counter()
    seqs, _ = encode_texts(clf.tokenizer, test.texts, args.max_length)
    result = evaluate(clf.model, seqs, label_indices(test.labels, clf.labels, "test"), clf.tokenizer.pad_id, 256)
    eval_s = time.perf_counter() - t0
    seen = summary["steps"] * args.batch_size
    print("| model | test accuracy | time |")
    print("|---|---|---|")
    print(f"| TF-IDF char 1-4-grams + logistic regression | {tfidf_acc:.4f} | {tfidf_s:.0f} s |")
    print(f"| tiny GPT + linear head ({summary['steps']} steps, {seen / len(train.texts):.2f} epochs) | "
          f"{result['accuracy']:.4f} | train {train_s / 60:.1f} min, test {eval_s:.0f} s |")
    print(f"confusion (rows true {clf.labels}, columns predicted): {result['confusion']}")
    print(f"RESULT nsmc_classify gpt_acc={result['accuracy']:.4f} tfidf_acc={tfidf_acc:.4f} "
          f"ratio={result['accuracy'] / tfidf_acc:.3f}")


if __name__ == "__main__":
    main()
