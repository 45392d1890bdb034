"""The graph index of a large collection: usearch's HNSW over unit vectors with the cosine
metric, keyed by the store's row keys. Collections up to the store's exact-scan threshold use
the flat index instead (flat.py): on this CPU it is both faster and exact up to a few hundred
thousand vectors.

usearch was chosen by measurement on the 2-core CPU machine (docs/vision.md, "Collections"):
100,000 random 512-d unit vectors, recall@10 against exact search and single-query latency; it
also removes keys in place (faiss's HNSW cannot), which upserts and deletes need.
The index is a cache of the store: it can always be rebuilt from the rows, so a crash never loses
more than the time to rebuild it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from usearch.index import Index

# Graph degree and beam widths. On uniformly random 512-d vectors (no structure for a graph to
# follow) recall@10 is only 0.2-0.4 at 100,000 vectors; clustered data like real embeddings
# fares far better (bench/RESULTS.md, "Collections"), and the store reranks the candidates with
# exact float32 scores either way.
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 256
# How a bulk add checks that each new row can be found: in its own top RELINK_TOP, re-inserting
# the rows that are not at most RELINK_ROUNDS times (a row whose vector another row repeats may
# never come first, and must not loop forever).
RELINK_TOP = 10
RELINK_ROUNDS = 3


class HnswIndex:
    def __init__(self, dimension: int, index: Index | None = None) -> None:
        self.dimension = dimension
        self._index = index or Index(
            ndim=dimension,
            metric="cos",
            dtype="f32",
            connectivity=CONNECTIVITY,
            expansion_add=EXPANSION_ADD,
            expansion_search=EXPANSION_SEARCH,
        )

    @classmethod
    def load(cls, path: Path, dimension: int) -> HnswIndex | None:
        """The saved index, or None when there is none or it does not fit (rebuild instead)."""
        if not path.exists():
            return None
        try:
            index = Index.restore(str(path))
        except Exception:  # a torn or foreign file: the rows are the truth, rebuild from them
            return None
        if index is None or index.ndim != dimension:
            return None
        index.expansion_search = EXPANSION_SEARCH
        return cls(dimension, index)

    def save(self, path: Path) -> None:
        """Written to a side file and renamed, so a crash mid-save leaves the old file whole."""
        partial = path.with_suffix(".partial")
        self._index.save(str(partial))
        partial.replace(path)

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> np.ndarray:
        return np.asarray(self._index.keys, dtype=np.int64)

    def add(self, keys: np.ndarray, vectors: np.ndarray, threads: int = 0) -> None:
        """threads=0: all cores (a bulk build); the store passes 1 for small upserts. After a
        multi-threaded add, the rows no search can reach are inserted again (`_relink`)."""
        if not len(keys):
            return
        keys = keys.astype(np.uint64)
        vectors = vectors.astype(np.float32, copy=False)
        self._index.add(keys, vectors, threads=threads)
        if threads != 1:
            self._relink(keys, vectors)

    def _relink(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Concurrent insertion can leave a node without the links that lead searches to it:
        after multi-threaded adds of random unit vectors, 0.19% (64-d) and 0.07% (512-d) of the
        rows were not in their own top 10, so no query would ever return them; one at a time,
        none were. Such rows are removed and inserted again on one thread, checked the way a
        search runs, a bounded number of times."""
        for _ in range(RELINK_ROUNDS):
            found = np.asarray(self._index.search(vectors, RELINK_TOP).keys, dtype=np.uint64)
            if found.ndim == 1:
                found = found.reshape(len(keys), -1)
            lost = ~(found == keys[:, None]).any(axis=1)
            if not lost.any():
                return
            keys, vectors = keys[lost], vectors[lost]
            self._index.remove(keys)
            self._index.add(keys, vectors, threads=1)

    def remove(self, keys: np.ndarray) -> None:
        if len(keys):
            self._index.remove(keys.astype(np.uint64))

    def search(self, vector: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, cosine similarities) of the `count` nearest, best first."""
        if count <= 0 or len(self._index) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        matches = self._index.search(vector.astype(np.float32), min(count, len(self._index)))
        keys = np.asarray(matches.keys, dtype=np.int64)
        similarities = 1.0 - np.asarray(matches.distances, dtype=np.float32)
        return keys, similarities
