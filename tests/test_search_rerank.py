"""Text searches re-ranked by the query-weighted distance (cvahash.kernel.weighted and
cvahash.query.search.search_text).

The kernel is checked against a plain Python loop over bits; the search end to end with
the shipped demo bundle on a small store whose codes lie near the query's code (so many
windows tie in Hamming distance and the weighted order differs from it). References
are computed here from the query's logits and the stored codes, not with the runtime's
code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvahash.cli import main
from cvahash.errors import InvalidArgument, InvalidCodes
from cvahash.kernel.weighted import mismatch_tables, rerank, weighted_distances
from cvahash.model.bundle import ModelBundle
from cvahash.query.search import RERANK_DEPTH, search_text, text_query_logits
from cvahash.store.code_store import CodeStore
from cvahash.store.records import Recording, Segment

DEMO = Path(__file__).parent / "data" / "demo-bundle"
QUERY = "an owl hooting at night"
BASE = 1_717_200_000.0  # 2024-06-01T00:00:00Z
HOP = 5.0


# --- the kernel against a loop over bits -----------------------------------------------


def loop_distance(logits, code_row, bits) -> float:
    """Sum of |logit_i| over the bits where the stored bit differs from logit_i > 0."""
    total = 0.0
    for i in range(bits):
        stored = (int(code_row[i // 8]) >> (7 - i % 8)) & 1
        if stored != (1 if logits[i] > 0 else 0):
            total += abs(float(logits[i]))
    return total


def loop_hamming(a, b) -> int:
    return sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b, strict=True))


@st.composite
def query_and_codes(draw):
    bits = draw(st.integers(1, 80))
    nbytes = (bits + 7) // 8
    m = draw(st.integers(0, 30))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(bits) * draw(st.sampled_from([0.01, 1.0, 50.0])))
    logits = logits.astype(np.float32)
    logits[rng.random(bits) < 0.1] = 0.0  # exact zeros: bit 0, cost 0
    codes = rng.integers(0, 256, (m, nbytes), dtype=np.uint8)
    codes[:, -1] &= np.uint8((0xFF << (nbytes * 8 - bits)) & 0xFF)  # zero padding bits
    return bits, logits, codes


@settings(max_examples=150, deadline=None)
@given(query_and_codes())
def test_weighted_distances_match_a_loop_over_bits(case):
    bits, logits, codes = case
    got = weighted_distances(logits, codes)
    want = [loop_distance(logits, row, bits) for row in codes]
    assert got.shape == (len(codes),) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # The same ranking as the inner product of the logits with the stored signs.
    signs = np.unpackbits(codes, axis=1)[:, :bits].astype(np.float64) * 2 - 1
    score = signs @ logits.astype(np.float64)
    np.testing.assert_allclose(np.abs(logits).sum(dtype=np.float64) - 2 * got, score,
                               rtol=1e-9, atol=1e-6)


@settings(max_examples=150, deadline=None)
@given(query_and_codes(), st.sampled_from([0.1, 1.0, 0.37, 3e-3, 7.0]))
def test_equal_weights_give_the_hamming_order_exactly(case, weight):
    bits, logits, codes = case
    logits = np.where(logits > 0, weight, -weight).astype(np.float32)
    query = np.packbits(logits > 0)
    hamming = np.array([loop_hamming(row, query) for row in codes], np.int64)
    # candidates in a store's order: by Hamming distance, ties by row
    store_order = np.lexsort((np.arange(len(codes)), hamming))
    codes, hamming = codes[store_order], hamming[store_order]
    assert np.array_equal(weighted_distances(logits, codes),
                          hamming * np.float64(np.float32(weight)))
    assert rerank(logits, codes, hamming).tolist() == list(range(len(codes)))


def test_rerank_orders_by_weighted_then_hamming_then_position():
    logits = np.array([4.0, -1.0, 1.0, 0.5, -0.5, 2.0, -3.0, 0.25], np.float32)
    query = np.packbits(logits > 0)[0]
    codes = np.array([[query ^ 0b01000000],  # bit 1 flipped: 1.0, 1 bit
                      [query ^ 0b00011000],  # bits 3, 4: 0.5 + 0.5 = 1.0, 2 bits
                      [query ^ 0b00100000],  # bit 2: 1.0, 1 bit (ties with row 0)
                      [query ^ 0b00000001],  # bit 7: 0.25
                      [query ^ 0b10000000],  # bit 0: 4.0
                      [query]], np.uint8)
    hamming = [1, 2, 1, 1, 1, 0]
    assert weighted_distances(logits, codes).tolist() == [1.0, 1.0, 1.0, 0.25, 4.0, 0.0]
    assert rerank(logits, codes, hamming).tolist() == [5, 3, 0, 2, 1, 4]
    tables = mismatch_tables(logits)
    assert tables.shape == (1, 256) and tables[0, query] == 0 and tables[0, query ^ 0xFF] == 12.25


def test_bad_input_is_refused_with_a_message():
    codes = np.zeros((3, 8), np.uint8)
    with pytest.raises(InvalidArgument, match="NaN"):
        weighted_distances(np.full(64, np.nan, np.float32), codes)
    with pytest.raises(InvalidCodes, match="same model"):
        weighted_distances(np.ones(128, np.float32), codes)
    with pytest.raises(InvalidCodes, match="uint8"):
        weighted_distances(np.ones(64, np.float32), codes.astype(np.int64))
    with pytest.raises(InvalidArgument, match="shape"):
        weighted_distances(np.ones((2, 64), np.float32), codes)
    with pytest.raises(InvalidArgument, match="candidate"):
        rerank(np.ones(64, np.float32), codes, [0, 1])
    assert weighted_distances(np.ones((1, 64), np.float32), codes[:0]).shape == (0,)


# --- search_text end to end with the demo bundle ----------------------------------------


@pytest.fixture(scope="module")
def bundle():
    b = ModelBundle.open(DEMO, threads=1)
    yield b
    b.close()


def near_codes(logits: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n codes, each the query's code with 2..24 random bits flipped (many Hamming ties)."""
    rng = np.random.default_rng(seed)
    bits = np.tile(logits > 0, (n, 1))
    for row in bits:
        flip = rng.choice(len(logits), rng.integers(2, 25), replace=False)
        row[flip] = ~row[flip]
    return np.packbits(bits, axis=1)


@pytest.fixture(scope="module")
def store(bundle, tmp_path_factory):
    """300 windows in 3 recordings (stations ridge-2, pond, ridge-2; a day apart)."""
    _, logits, _, _ = text_query_logits(bundle, QUERY)
    codes = near_codes(logits[0], 300, seed=7)
    s = CodeStore.create(tmp_path_factory.mktemp("rerank") / "db", bundle.bits,
                         bundle.fingerprint)
    for i, station in enumerate(["ridge-2", "pond", "ridge-2"]):
        start = BASE + 86400 * i
        rec = Recording(path=f"/data/rec{i}.wav", station=station, start_utc=start,
                        sample_rate=48000, duration_s=HOP * 100, content_hash=f"h{i}")
        s.append(codes[100 * i:100 * (i + 1)],
                 Segment(recording=rec, first_offset_s=0.0, length_s=10.0,
                         capture_start_utc=start, hop_s=HOP, n_rows=100, clock_source="gps"))
    s.flush()
    yield {"store": s, "codes": codes, "logits": logits[0], "dir": s.directory}
    s.close()


def reference(logits, codes, rows, k, depth):
    """Rows of the expected answer: the `depth` Hamming-nearest of ``rows`` (ties by
    row), ordered by (weighted distance, Hamming distance, row), the first k."""
    query = np.packbits(logits > 0)
    bits = len(logits)
    ham = {r: loop_hamming(codes[r], query) for r in rows}
    cands = sorted(rows, key=lambda r: (ham[r], r))[:max(k, depth)]
    weighted = {r: loop_distance(logits, codes[r], bits) for r in cands}
    return sorted(cands, key=lambda r: (weighted[r], ham[r], r))[:k], ham, weighted


@pytest.mark.parametrize("k, depth", [(20, RERANK_DEPTH), (10, 50), (150, 30)])
def test_hits_follow_the_weighted_order_and_keep_their_hamming_distance(store, bundle, k,
                                                                        depth):
    codes, logits = store["codes"], store["logits"]
    result = search_text(store["store"], bundle, QUERY, k, threads=1, depth=depth)
    want, ham, weighted = reference(logits, codes, range(len(codes)), k, depth)
    assert result.order == "weighted" and result.to_dict()["order"] == "weighted"
    assert [h.row for h in result.hits] == want
    assert [h.rank for h in result.hits] == list(range(1, k + 1))
    assert [h.distance for h in result.hits] == [ham[r] for r in want]
    assert all(isinstance(h.distance, int) for h in result.hits)
    w = [weighted[h.row] for h in result.hits]
    assert w == sorted(w)
    # the codes near the query tie a lot in Hamming distance: the order really changed
    plain = search_text(store["store"], bundle, QUERY, k, threads=1, rerank=False)
    assert [h.row for h in plain.hits] != want


def test_rerank_off_is_the_plain_hamming_order(store, bundle):
    codes, logits = store["codes"], store["logits"]
    query = np.packbits(logits > 0)
    ham = [loop_hamming(c, query) for c in codes]
    want = sorted(range(len(codes)), key=lambda r: (ham[r], r))[:40]
    result = search_text(store["store"], bundle, QUERY, 40, threads=1, rerank=False)
    assert result.order == "hamming"
    assert [h.row for h in result.hits] == want
    assert [h.distance for h in result.hits] == [ham[r] for r in want]
    assert [h.rank for h in result.hits] == list(range(1, 41))
    # the store's own Hamming search is the same answer
    assert [h.row for h in store["store"].search(query, 40)[0]] == want


def test_filters_apply_before_the_rerank(store, bundle):
    codes, logits = store["codes"], store["logits"]
    since, until = BASE + 86400, BASE + 86400 * 3
    cases = [({"station": "pond"}, range(100, 200)),
             ({"since": since}, range(100, 300)),
             ({"until": since}, range(0, 100)),
             ({"station": "ridge-2", "since": since, "until": until}, range(200, 300))]
    for filters, rows in cases:
        result = search_text(store["store"], bundle, QUERY, 15, threads=1, depth=40,
                             **filters)
        want, _, _ = reference(logits, codes, list(rows), 15, 40)
        assert [h.row for h in result.hits] == want, filters
        assert result.filters == filters


def test_k_past_the_store_k_one_and_an_empty_store(store, bundle, tmp_path):
    codes, logits = store["codes"], store["logits"]
    everything = search_text(store["store"], bundle, QUERY, 1000, threads=1)
    want, _, _ = reference(logits, codes, range(len(codes)), 1000, RERANK_DEPTH)
    assert [h.row for h in everything.hits] == want and len(want) == len(codes)
    one = search_text(store["store"], bundle, QUERY, 1, threads=1)
    assert [h.row for h in one.hits] == want[:1] and one.hits[0].rank == 1
    nothing = search_text(store["store"], bundle, QUERY, 5, threads=1, station="nowhere")
    assert nothing.hits == []
    with CodeStore.create(tmp_path / "empty", bundle.bits, bundle.fingerprint) as empty:
        for rerank_on in (True, False):
            assert search_text(empty, bundle, QUERY, 5, rerank=rerank_on).hits == []
    with pytest.raises(InvalidArgument, match="depth"):
        search_text(store["store"], bundle, QUERY, 5, depth=0)


def cli_json(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def test_search_command_reranks_and_hamming_only_turns_it_off(store, bundle, capsys):
    codes, logits = store["codes"], store["logits"]
    common = ["search", QUERY, "--db", store["dir"], "--bundle", DEMO, "-k", 25,
              "--threads", 1, "--json"]
    got = cli_json(capsys, *common)
    want, ham, _ = reference(logits, codes, range(len(codes)), 25, RERANK_DEPTH)
    assert got["order"] == "weighted"
    assert [h["row"] for h in got["hits"]] == want
    assert [h["distance"] for h in got["hits"]] == [ham[r] for r in want]
    plain = cli_json(capsys, *common, "--hamming-only")
    assert plain["order"] == "hamming"
    assert [(h["distance"], h["row"]) for h in plain["hits"]] == sorted(
        (ham[r], r) for r in range(len(codes)))[:25]
    # the table shows the same windows in the same order with their Hamming distances
    rc = main([str(a) for a in common[:-1]])
    printed = capsys.readouterr()
    table = printed.out.splitlines()
    assert rc == 0
    ranks = [line.split()[:2] for line in table if line.split() and line.split()[0].isdigit()]
    assert ranks == [[str(h["rank"]), str(h["distance"])] for h in got["hits"]]
    # the table says why its distances are out of order, and how to sort by them
    distances = [h["distance"] for h in got["hits"]]
    assert distances != sorted(distances)
    assert "--hamming-only ranks by distance alone" in printed.err
    assert main([str(a) for a in common[:-1]] + ["--hamming-only"]) == 0
    assert "ranks by distance alone" not in capsys.readouterr().err


def test_help_names_the_flag_and_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--hamming-only" in out and f"default: the {RERANK_DEPTH} Hamming-nearest" in out


# --- the benchmark ranks as the station does --------------------------------------------


def test_evaluation_weighted_ranking_is_the_station_order():
    pytest.importorskip("torch")
    from cvahash.export.train.evaluate import weighted_ranking

    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 24)).astype(np.float32)
    items = rng.random((40, 24)) < 0.5
    items[5:12] = logits[0] > 0  # ties at distance 0
    got = weighted_ranking(logits, items, 15)
    packed = np.packbits(items, axis=1)
    for q, row in zip(logits, got, strict=True):
        want, _, _ = reference(q, packed, range(len(items)), 15, 15)
        assert row.tolist() == want
    # equal weights: the Hamming ranking (ties by id), cut at the depth
    flat = np.where(logits > 0, 1.0, -1.0).astype(np.float32)
    ham = (flat[:, None, :] > 0) != items[None]
    by_ham = np.argsort(ham.sum(2), axis=1, kind="stable")[:, :15]
    assert np.array_equal(weighted_ranking(flat, items, 15), by_ham)
