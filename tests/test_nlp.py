"""`hangpt nlp`: morphemes, frequencies, TF-IDF (against a hand computation), word2vec, baselines."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import joblib
import numpy as np
import pytest

from hangpt.cli import main

pytest.importorskip("kiwipiepy")
pytest.importorskip("gensim")


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


# -- morphology -----------------------------------------------------------------------------------


def test_morphs_equal_kiwipiepys_analysis(capsys):
    from kiwipiepy import Kiwi

    sentence = "아버지가방에들어가신다"
    tokens = Kiwi().tokenize(sentence)
    code, out, _ = run(capsys, "nlp", "morphs", "--text", sentence, "--pos")
    assert code == 0
    assert out.split() == [f"{t.form}/{t.tag}" for t in tokens]
    assert out.split()[:4] == ["아버지/NNG", "가/JKS", "방/NNG", "에/JKB"]  # 아버지 가 방에, not 아버지 가방에
    code, out, _ = run(capsys, "nlp", "morphs", "--text", sentence, "--stem")
    assert "들어가다" in out.split() and "들어가" not in out.split()
    code, out, _ = run(capsys, "nlp", "morphs", "--text", sentence, "--json")
    morphs = json.loads(out)["texts"][0]["morphs"]
    assert [(m["form"], m["tag"], m["lemma"]) for m in morphs] == [(t.form, t.tag, t.lemma) for t in tokens]


def test_clean_stopwords_and_filters(tmp_path, capsys):
    from hangpt.nlp.morphology import clean, load_stopwords, tokenize

    assert clean("정말 재밌어요!! ㅋㅋ 10점 만점에 10점~ good") == "정말 재밌어요 ㅋㅋ 점 만점에 점"
    builtin = load_stopwords("ko")
    assert {"이", "가", "은", "는", "을", "를", "하다"} <= builtin and not any(w.startswith("#") for w in builtin)
    assert load_stopwords("none") == frozenset()
    own = tmp_path / "stop.txt"
    own.write_text("# mine\n방\n", encoding="utf-8")
    assert load_stopwords(str(own)) == {"방"}
    sentence = "아버지가방에들어가신다"
    assert tokenize([sentence], stopwords=["방"]) == [["아버지", "가", "에", "들어가", "시", "ᆫ다"]]
    assert tokenize([sentence], keep="content", stem=True) == [["아버지", "방", "들어가다"]]
    assert tokenize(["영화 배우가 좋았다"], keep="nouns") == [["영화", "배우"]]
    code, out, _ = run(capsys, "nlp", "morphs", "--text", sentence, "--keep", "content", "--stopwords", own)
    assert out.split() == ["아버지", "들어가"]
    code, _, err = run(capsys, "nlp", "morphs", "--text", sentence, "--stopwords", tmp_path / "missing.txt")
    assert code == 2 and err.startswith("error: --stopwords") and "missing.txt" in err


# -- frequencies ----------------------------------------------------------------------------------


def test_freq_counts_morphemes_and_draws(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("영화가 정말 좋았다\n영화를 또 보고 싶다\n", encoding="utf-8")
    (corpus / "b.txt").write_text("배우의 연기가 좋았다 영화는 최고\n", encoding="utf-8")
    code, out, err = run(capsys, "nlp", "freq", "--data", corpus, "--top", "2", "--json",
                         "--out", tmp_path / "bar.png", "--wordcloud", tmp_path / "cloud.png")
    assert code == 0
    result = json.loads(out)
    assert result["top"] == [{"word": "영화", "count": 3}, {"word": "좋", "count": 2}]  # 영화가/영화를/영화는
    assert (tmp_path / "bar.png").stat().st_size > 1000 and (tmp_path / "cloud.png").stat().st_size > 1000
    assert "bar chart written" in err and "word cloud written" in err
    code, out, _ = run(capsys, "nlp", "freq", "--data", corpus, "--top", "1", "--stem")
    assert out.splitlines()[1].split() == ["1", "영화", "3"]


# -- TF-IDF: the worked example -------------------------------------------------------------------

DOCS = ["먹고 싶은 사과", "먹고 싶은 바나나", "길고 노란 바나나 바나나", "저는 과일이 좋아요"]


def hand_tfidf() -> tuple[list[str], dict, dict, list[dict]]:
    """The textbook computation, written out: df, smoothed idf, tf x idf, then unit length."""
    n = len(DOCS)
    terms = sorted({w for d in DOCS for w in d.split()})
    df = {t: sum(t in d.split() for d in DOCS) for t in terms}
    idf = {t: math.log((1 + n) / (1 + df[t])) + 1 for t in terms}
    rows = []
    for d in DOCS:
        raw = {t: d.split().count(t) * idf[t] for t in terms}
        length = math.sqrt(sum(v * v for v in raw.values()))
        rows.append({"raw": raw, "l2": {t: v / length for t, v in raw.items()}})
    return terms, df, idf, rows


def test_tfidf_worked_example_equals_hand_computation(tmp_path, capsys):
    terms, df, idf, rows = hand_tfidf()
    assert df["바나나"] == 2 and df["사과"] == 1
    assert idf["먹고"] == pytest.approx(math.log(5 / 3) + 1) == pytest.approx(1.510826)  # df 2
    assert idf["사과"] == pytest.approx(math.log(5 / 2) + 1) == pytest.approx(1.916291)  # df 1
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    code, out, _ = run(capsys, "nlp", "tfidf", "--data", docs, "--query", "노란 바나나", "--json")
    assert code == 0
    r = json.loads(out)
    assert r["terms"] == terms
    assert r["df"] == [df[t] for t in terms]
    assert r["idf"] == pytest.approx([idf[t] for t in terms], abs=1e-6)
    assert np.allclose(r["tfidf"], [[row["l2"][t] for t in terms] for row in rows], atol=1e-6)
    assert r["tfidf"][2][terms.index("바나나")] == pytest.approx(0.744450, abs=1e-6)
    # cosine of unit vectors = dot product; documents 1 and 2 share 먹고 and 싶은
    l2 = np.array([[row["l2"][t] for t in terms] for row in rows])
    assert np.allclose(r["cosine"], l2 @ l2.T, atol=1e-6)
    assert r["cosine"][0][3] == 0 and r["cosine"][0][1] == pytest.approx(0.607841, abs=1e-6)
    assert [q["doc"] for q in r["query"]][:2] == [3, 2]  # "노란 바나나": the yellow-banana document first
    assert r["top_terms"][2][0][0] == "바나나"

    code, out, _ = run(capsys, "nlp", "tfidf", "--data", docs, "--no-norm", "--json")
    raw = json.loads(out)["tfidf"]
    assert raw[2][terms.index("바나나")] == pytest.approx(2 * idf["바나나"])  # tf 2 x idf 1.5108 = 3.0217
    assert np.allclose(raw, [[row["raw"][t] for t in terms] for row in rows], atol=1e-6)

    code, out, _ = run(capsys, "nlp", "tfidf", "--data", docs)
    lines = out.splitlines()
    assert ["사과", "1", "1.9163"] in [line.split() for line in lines]
    assert ["바나나", "2", "1.5108"] in [line.split() for line in lines]
    assert lines[0] == "4 documents, 9 terms; idf = ln((1 + n) / (1 + df)) + 1"
    assert any(line.split() == ["d3", "바나나", "0.7444,", "길고", "0.4721,", "노란", "0.4721"] for line in lines)


def test_tfidf_on_morphemes_and_bad_input(tmp_path, capsys):
    code, out, _ = run(capsys, "nlp", "tfidf", "--text", "영화가 좋다", "--text", "영화를 봤다", "--tokens", "morphs",
                       "--json")
    r = json.loads(out)
    assert "영화" in r["terms"] and r["df"][r["terms"].index("영화")] == 2  # 영화가 and 영화를 share 영화
    code, _, err = run(capsys, "nlp", "tfidf", "--text", "하나뿐")
    assert code == 2 and "at least 2 documents" in err


# -- word2vec -------------------------------------------------------------------------------------


def review_corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    good = ["정말 재미있는 영화", "배우 연기가 최고", "감동적인 명작", "음악이 아름다운 영화"]
    bad = ["정말 지루한 영화", "배우 연기가 최악", "시간 아까운 졸작", "돈이 아까운 영화"]
    return [(f"{rng.choice(good)} {rng.choice(good)}", "1") if i % 2 else (f"{rng.choice(bad)} {rng.choice(bad)}", "0")
            for i in range(n)]


def test_word2vec_train_similar_analogy_plot(tmp_path, capsys):
    corpus = tmp_path / "reviews.txt"
    corpus.write_text("\n".join(t for t, _ in review_corpus(300)) + "\n", encoding="utf-8")
    code, out, _ = run(capsys, "nlp", "word2vec", "train", "--data", corpus, "--out", tmp_path / "w2v", "--sg", "1",
                       "--vector-size", "16", "--min-count", "2", "--epochs", "3", "--workers", "1")
    assert code == 0 and out.startswith(f"word2vec (skip-gram) written to {tmp_path / 'w2v'}")
    settings = json.loads((tmp_path / "w2v" / "hangpt.json").read_text(encoding="utf-8"))
    assert settings["sg"] == 1 and settings["vector_size"] == 16 and settings["tokenization"]["keep"] == "content"
    from hangpt.nlp.word2vec import load_word2vec

    wv, _ = load_word2vec(tmp_path / "w2v")
    vocab = set(wv.index_to_key)
    assert {"영화", "배우", "연기"} <= vocab and "가" not in vocab  # morphemes, particles dropped
    code, out, _ = run(capsys, "nlp", "word2vec", "similar", "--model", tmp_path / "w2v", "--word", "영화",
                       "--top", "3", "--json")
    similar = json.loads(out)["similar"]
    assert len(similar) == 3 and all(s["word"] in vocab and s["word"] != "영화" for s in similar)
    assert all(-1 <= s["cosine"] <= 1 for s in similar)
    code, out, _ = run(capsys, "nlp", "word2vec", "similar", "--model", tmp_path / "w2v", "--word", "최고",
                       "--word", "지루", "--minus", "최악", "--top", "2")
    assert out.splitlines()[0] == "최고 + 지루 - 최악" and len(out.splitlines()) == 3
    code, _, err = run(capsys, "nlp", "word2vec", "similar", "--model", tmp_path / "w2v", "--word", "우주선")
    assert code == 2 and "우주선" in err and "vocabulary" in err
    code, out, _ = run(capsys, "nlp", "word2vec", "plot", "--model", tmp_path / "w2v", "--words", "영화,배우,연기,최고",
                       "--out", tmp_path / "pca.png")
    assert code == 0 and (tmp_path / "pca.png").stat().st_size > 1000
    code, _, err = run(capsys, "nlp", "word2vec", "similar", "--model", tmp_path, "--word", "영화")
    assert code == 2 and "not a word2vec folder" in err


def test_word2vec_is_repeatable_with_one_worker():
    from hangpt.nlp.morphology import tokenize
    from hangpt.nlp.word2vec import train_word2vec

    sentences = tokenize([t for t, _ in review_corpus(100)])
    a, b = (train_word2vec(sentences, vector_size=8, min_count=1, epochs=2, workers=1, seed=3) for _ in range(2))
    assert np.array_equal(a.wv.vectors, b.wv.vectors)


# -- baselines ------------------------------------------------------------------------------------


def write_nsmc(path, rows) -> None:
    path.write_text("id\tdocument\tlabel\n" + "".join(f"{i}\t{t}\t{y}\n" for i, (t, y) in enumerate(rows))
                    + "999\t\t1\n", encoding="utf-8")  # an empty review, as NSMC has


@pytest.mark.parametrize("features", ["tfidf-morphs", "tfidf-char", "w2v-mean"])
def test_classify_baseline_trains_and_evaluates(features, tmp_path, capsys):
    write_nsmc(tmp_path / "train.txt", review_corpus(200, seed=1))
    write_nsmc(tmp_path / "test.txt", review_corpus(60, seed=2))
    code, out, _ = run(capsys, "nlp", "classify-baseline", "--data", tmp_path / "train.txt", "--test",
                       tmp_path / "test.txt", "--features", features, "--out", tmp_path / "model.joblib")
    assert code == 0
    lines = out.splitlines()
    accuracy = float(lines[0].split()[1].rstrip("%")) / 100
    assert lines[0].endswith("on 60 texts (1 empty rows skipped)") and accuracy >= 0.9
    assert lines[1].split() == ["true", "\\", "predicted", "0", "1"]  # the layout of `hangpt classify eval`
    confusion = [[int(c) for c in line.split()[1:]] for line in lines[2:4]]
    assert sum(map(sum, confusion)) == 60 and (confusion[0][0] + confusion[1][1]) / 60 == pytest.approx(accuracy, abs=1e-4)
    baseline = joblib.load(tmp_path / "model.joblib")
    assert baseline.predict(["정말 재미있는 영화 최고", "돈이 아까운 졸작"]) == ["1", "0"]


def test_classify_baseline_with_a_trained_word2vec(tmp_path, capsys):
    write_nsmc(tmp_path / "train.txt", review_corpus(200, seed=1))
    write_nsmc(tmp_path / "test.txt", review_corpus(60, seed=2))
    run(capsys, "nlp", "word2vec", "train", "--data", tmp_path / "train.txt", "--text-column", "document",
        "--out", tmp_path / "w2v", "--min-count", "1", "--vector-size", "16", "--sg", "1", "--epochs", "20",
        "--workers", "1")
    code, out, _ = run(capsys, "nlp", "classify-baseline", "--data", tmp_path / "train.txt", "--test",
                       tmp_path / "test.txt", "--features", "w2v-mean", "--w2v", tmp_path / "w2v", "--json")
    result = json.loads(out)
    assert result["n"] == 60 and result["labels"] == ["0", "1"] and result["accuracy"] >= 0.9
    assert "word2vec_seconds" not in result  # the given vectors were used, none trained


def test_classify_baseline_rejects_unknown_test_label(tmp_path, capsys):
    write_nsmc(tmp_path / "train.txt", review_corpus(40))
    write_nsmc(tmp_path / "test.txt", [("그냥 그래요", "2")])
    code, _, err = run(capsys, "nlp", "classify-baseline", "--data", tmp_path / "train.txt", "--test",
                       tmp_path / "test.txt", "--features", "tfidf-char")
    assert code == 2 and f"error: {tmp_path / 'test.txt'}: labels not seen in training: 2 (known: 0, 1)" in err


def test_nlp_help_imports_no_heavy_library():
    """`hangpt nlp --help` stays fast: kiwipiepy, sklearn, gensim and torch load only in the commands."""
    code = ("import sys; from hangpt.cli import main\ntry: main(['nlp', '--help'])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('kiwipiepy', 'sklearn', 'gensim', 'wordcloud', 'torch', 'matplotlib') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("HEAVY []")
