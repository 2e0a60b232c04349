"""A bundle remembers the logits of recent text queries: a repeated query gives the same
code without running the text graph, and a mix of new and remembered queries gives what a
fresh bundle gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvahash.model import bundle as bundle_module
from cvahash.model.bundle import ModelBundle

DEMO = Path(__file__).parent / "data" / "demo-bundle"
TEXTS = ["owl hooting", "a frog chorus by the pond", "wind " * 60, "crow"]


class Counting:
    """Wraps an ONNX Runtime session and counts the rows it is asked to encode."""

    def __init__(self, session):
        self.session, self.rows = session, 0

    def run(self, names, feeds):
        self.rows += len(feeds["input_ids"])
        return self.session.run(names, feeds)

    def get_providers(self):
        return self.session.get_providers()


def _counting(bundle: ModelBundle) -> Counting:
    counting = Counting(bundle._session("text"))
    bundle._sessions["text"] = counting
    return counting


def test_a_repeated_query_is_not_encoded_again():
    fresh = ModelBundle.open(DEMO, graphs=("text",)).encode_text(TEXTS)
    bundle = ModelBundle.open(DEMO, graphs=("text",))
    counting = _counting(bundle)
    first = bundle.encode_text(["owl hooting"])
    assert counting.rows == 1
    again = bundle.encode_text(["owl hooting"])
    assert counting.rows == 1 and np.array_equal(first, again)
    mixed = bundle.encode_text(TEXTS + ["owl hooting", "crow"])
    assert counting.rows == 1 + 3  # only the three texts not seen before
    assert np.array_equal(mixed[:4], fresh)
    assert np.array_equal(mixed[4:], fresh[[0, 3]])


def test_the_memo_keeps_only_the_most_recent_queries(monkeypatch):
    monkeypatch.setattr(bundle_module, "TEXT_MEMO", 2)
    bundle = ModelBundle.open(DEMO, graphs=("text",))
    counting = _counting(bundle)
    for text in ("owl", "crow", "frog"):
        bundle.encode_text([text])
    assert counting.rows == 3
    bundle.encode_text(["frog"])
    bundle.encode_text(["crow"])
    assert counting.rows == 3  # the two most recent are remembered
    bundle.encode_text(["owl"])
    assert counting.rows == 4  # the oldest was forgotten


@pytest.mark.parametrize("text", ["owl hooting", "wind " * 60])
def test_remembered_logits_are_not_shared_with_the_caller(text):
    bundle = ModelBundle.open(DEMO, graphs=("text",))
    first = bundle.text_logits([text])
    first[:] = 0.0  # a caller scribbling on its result changes nothing remembered
    again = bundle.text_logits([text])
    assert np.array_equal(again, ModelBundle.open(DEMO, graphs=("text",)).text_logits([text]))
