"""The one photo walk: splits filled as the planner fills them, problems raised or counted, blobs within
their budget, and the prepared file workers read."""

import pickle
from pathlib import Path

import pytest

from segshards.writer.format.keys import accept
from segshards.writer.recipes import walk
from segshards.writer.recipes.walk import Checked, Outcome, Prepared, Selection, Walk, tally
from segshards.writer.sources.mask_pairs import BadPair
from segshards.writer.sources.photos import BadRecord


def stream(*keys: str | None) -> list[tuple[int, Outcome]]:
    """Items 0.. with these keys in order; None: a problem."""
    return [
        (i, BadRecord("bad", f"item {i}") if k is None else Checked(k.encode(), b"", None, k.encode() * 4))
        for i, k in enumerate(keys)
    ]


def test_splits_are_filled_in_order_and_the_planner_accepts_exactly_the_chosen() -> None:
    sel = Selection()
    w = Walk(sel, on_error="skip", name=lambda i: f"#{i}")
    it = iter(stream("a", "b", "a", None, "c", "b", "d", "e"))
    assert w.fill("train", 2, it) and w.fill("val", 2, it) and not w.fill("test", 5, it)
    assert sel.offered == {"train": [0, 1], "val": [2, 4, 5, 6], "test": [7]}
    assert sel.chosen == {"train": [0, 1], "val": [4, 6], "test": [7]}
    assert sel.duplicates == {"train": [], "val": [(2, 0), (5, 1)], "test": []}
    assert list(sel.skipped) == ["#3"] and sel.skipped["#3"].reason == "bad"
    seen: set[bytes] = set()  # the planner, on the offered keys in the same order
    for split in ("train", "val", "test"):
        taken, _ = accept([sel.checked[i].key for i in sel.offered[split]], seen, None)
        assert [sel.offered[split][j] for j in taken] == sel.chosen[split]


def test_a_full_split_stops_at_its_count_or_drains_the_rest() -> None:
    sel = Selection()
    w = Walk(sel, on_error="skip", name=int)
    rest = iter(stream("a", "b", "c"))
    assert w.fill("train", 1, rest)
    assert next(rest)[0] == 1  # nothing beyond the count was taken
    sel = Selection()
    w = Walk(sel, on_error="skip", name=int)
    assert w.fill("test", 1, iter(stream("a", "b", "a", None)), drain=True)
    assert sel.offered["test"] == [0, 2] and sel.chosen["test"] == [0] and list(sel.skipped) == [3]


def test_a_problem_raises_under_raise() -> None:
    w = Walk(Selection(), on_error="raise", name=int)
    with pytest.raises(BadRecord, match="item 1"):
        w.fill("train", 3, iter(stream("a", None, "b")))


def test_blobs_beyond_the_budget_are_dropped() -> None:
    w = Walk(Selection(), on_error="skip", name=int, budget=10)
    kept = [o.blob for _, o in w.budgeted(stream("a", "b", "c", None)) if isinstance(o, Checked)]
    assert kept == [b"aaaa", b"bbbb", None]


def test_tally_counts_by_reason_in_the_order_given() -> None:
    found = tally([(3, BadRecord("z", "three")), (1, BadRecord("a", "one"))], [("r", BadRecord("z", "r"))])
    assert found.counts == {"a": 1, "z": 2}
    assert found.names == {"a": [1], "z": [3, "r"]} and found.first == {"a": "one", "z": "three"}


def test_bad_records_pickle_with_their_class_and_reason() -> None:
    for problem in (BadRecord("missing-image", "x: not found"), BadPair("missing-mask", "y.jpg: no mask")):
        back = pickle.loads(pickle.dumps(problem))
        assert type(back) is type(problem) and (back.reason, str(back)) == (problem.reason, str(problem))


def test_prepared_rows_and_blobs_come_back_from_the_file(tmp_path: Path) -> None:
    rows = {4: ("four", 4), 9: ("nine", 9), 2: ("two", 2)}
    prep = Prepared({"head": 1}, rows, {9: b"ninth blob", 2: b"2"})
    tag = walk.share_prepared(tmp_path, "kind", prep)
    assert walk.load_prepared(tag) is prep  # the writing process keeps its own
    walk.WRITTEN.clear()
    back = walk.load_prepared(tag)
    assert (back.head, back.rows) == ({"head": 1}, rows)
    assert [back.blob(i) for i in (2, 4, 9)] == [b"2", None, b"ninth blob"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [Path(tag).name + ".bin", Path(tag).name + ".pickle"]
    )
