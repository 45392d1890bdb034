"""The collection store without a server: recall of its ANN index against exact search, and an
index that is stale or missing after a crash reconciled with the rows on reopen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.runtime.errors import FailedPrecondition
from services.vision.collections.store import CollectionStore

DIM = 64


def unit_rows(seed: int, count: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def fill(store: CollectionStore, name: str, start: int, rows: np.ndarray) -> list[str]:
    ids = [f"v-{start + i}" for i in range(len(rows))]
    store.upsert("", name, ids, rows, [{"n": str(start + i)} for i in range(len(rows))])
    return ids


def test_recall_at_10_against_exact_search(tmp_path: Path) -> None:
    store = CollectionStore(tmp_path, "model", DIM)
    store.create("", "c", exist_ok=False)
    rows = unit_rows(0, 5000)
    for start in range(0, len(rows), 1000):
        fill(store, "c", start, rows[start : start + 1000])
    queries = unit_rows(1, 100)
    exact = np.argsort(-(queries @ rows.T), axis=1)[:, :10]
    recalls = []
    for query, truth in zip(queries, exact, strict=True):
        hits = store.search("", "c", query, 10, {}, False).hits
        found = {int(hit.id.removeprefix("v-")) for hit in hits}
        recalls.append(len(found & set(truth.tolist())) / 10)
    assert np.mean(recalls) >= 0.98
    store.close()


def test_a_crash_before_any_index_save_loses_no_row(tmp_path: Path) -> None:
    first = CollectionStore(tmp_path, "model", DIM)
    first.create("", "c", exist_ok=False)
    rows = unit_rows(2, 300)
    fill(first, "c", 0, rows)
    # No close(): the process died; only committed rows are on disk.
    second = CollectionStore(tmp_path, "model", DIM)
    hits = second.search("", "c", rows[42], 1, {}, False).hits
    assert hits[0].id == "v-42"
    second.close()


def test_a_stale_saved_index_is_reconciled(tmp_path: Path) -> None:
    first = CollectionStore(tmp_path, "model", DIM)
    first.create("", "c", exist_ok=False)
    rows = unit_rows(3, 200)
    ids = fill(first, "c", 0, rows)
    first.close()  # index saved with all 200
    second = CollectionStore(tmp_path, "model", DIM)
    assert second.delete_items("", "c", ids[:100]) == 100
    newer = unit_rows(4, 50)
    fill(second, "c", 1000, newer)
    # Dies without saving: the file on disk still has the 100 deleted keys, not the 50 new.
    third = CollectionStore(tmp_path, "model", DIM)
    assert third.search("", "c", newer[7], 1, {}, False).hits[0].id == "v-1007"
    returned = {hit.id for hit in third.search("", "c", rows[5], 150, {}, False).hits}
    assert not returned & set(ids[:100])
    assert third.list("")[0].count == 150
    third.close()


def test_another_model_is_refused(tmp_path: Path) -> None:
    store = CollectionStore(tmp_path, "model-a", DIM)
    store.create("", "c", exist_ok=False)
    store.close()
    other = CollectionStore(tmp_path, "model-b", DIM)
    with pytest.raises(FailedPrecondition):
        other.search("", "c", unit_rows(5, 1)[0], 1, {}, False)
    other.close()
