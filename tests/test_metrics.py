"""Retrieval metrics against answers worked out by hand (numpy only: no torch needed)."""

import numpy as np
import pytest

from cvahash.export.train.metrics import (
    average_precision_at_k,
    cosine_similarities,
    hamming_distances,
    precision_at_k,
    rank_by_distance,
    relevance_matrix,
    rerank,
    retrieval_scores,
)


def test_ap_at_k_hand_computed():
    # One query, 6 items; relevant ids {0, 3, 4} (R=3). Ranking: 3, 1, 0, 5, 4, 2
    # hits at ranks 1, 3, 5.
    ranking = np.array([[3, 1, 0, 5, 4, 2]])
    relevant = np.array([[True, False, False, True, True, False]])
    # AP@1 = (1/1) / min(1,3) = 1
    # AP@3 = (1/1 + 2/3) / min(3,3) = 5/9
    # AP@5 = (1 + 2/3 + 3/5) / 3 = 34/45
    # AP@2 = (1/1) / 2 = 0.5
    assert average_precision_at_k(ranking, relevant, 1)[0] == pytest.approx(1.0)
    assert average_precision_at_k(ranking, relevant, 2)[0] == pytest.approx(0.5)
    assert average_precision_at_k(ranking, relevant, 3)[0] == pytest.approx(5 / 9)
    assert average_precision_at_k(ranking, relevant, 5)[0] == pytest.approx(34 / 45)
    # P@K: 1/1, 1/2, 2/3, 3/5
    assert precision_at_k(ranking, relevant, 1)[0] == pytest.approx(1.0)
    assert precision_at_k(ranking, relevant, 2)[0] == pytest.approx(0.5)
    assert precision_at_k(ranking, relevant, 3)[0] == pytest.approx(2 / 3)
    assert precision_at_k(ranking, relevant, 5)[0] == pytest.approx(0.6)


def test_ap_divides_by_min_k_r_and_skips_queries_without_relevant_items():
    # Query 0: one relevant item (id 2), found at rank 2: AP@10 = (1/2)/1 = 0.5.
    # Query 1: nothing relevant: excluded from the means.
    # Query 2: all 3 items relevant, any order: AP = 1, P@3 = 1.
    ranking = np.array([[0, 2, 1], [0, 1, 2], [2, 1, 0]])
    relevant = np.array([[False, False, True], [False, False, False], [True, True, True]])
    ap = average_precision_at_k(ranking, relevant, 10)
    assert ap[0] == pytest.approx(0.5) and np.isnan(ap[1]) and ap[2] == pytest.approx(1.0)
    scores = retrieval_scores(ranking, relevant, ks=(1, 20))
    assert scores["mAP@20"] == pytest.approx(0.75)
    assert scores["mAP@1"] == pytest.approx(0.5)   # query 0 misses at rank 1, query 2 hits
    # P@20 counts the full K in the denominator: (1/20 + 3/20) / 2
    assert scores["P@20"] == pytest.approx(0.1)


def test_hamming_distances_and_tie_break_by_id():
    q = np.array([[1, 0, 1, 1]])
    db = np.array([[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 1], [0, 0, 1, 1]])
    d = hamming_distances(q, db)
    assert d.tolist() == [[0, 4, 1, 1, 1]]
    # {-1,+1} codes give the same distances
    assert hamming_distances(2 * q - 1, 2 * db - 1).tolist() == d.tolist()
    # ids 2, 3, 4 tie at distance 1: ascending id order
    assert rank_by_distance(d).tolist() == [[0, 2, 3, 4, 1]]


def test_rerank_orders_candidates_by_cosine():
    sims = np.array([[0.1, 0.9, 0.5, 0.7]])
    cands = np.array([[0, 2, 3]])  # item 1 was not a candidate: it stays out
    assert rerank(cands, sims).tolist() == [[3, 2, 0]]


def test_relevance_is_label_overlap_and_cosine_is_scale_free():
    rel = relevance_matrix([["a"], ["b", "c"]], [["a", "x"], ["c"], ["y"]])
    assert rel.tolist() == [[True, False, False], [False, True, False]]
    a = np.array([[1.0, 0.0], [3.0, 4.0]])
    s = cosine_similarities(a, 10 * a)
    assert s[0, 0] == pytest.approx(1.0) and s[0, 1] == pytest.approx(0.6)
