"""Persistent vector collections: rows in SQLite, one index per collection in memory.

SQLite (WAL journal) is the source of truth: an upsert is acknowledged only after its
transaction commits, so a SIGKILL loses at most the batch that was not acknowledged. The index
of a collection is a cache of its rows. Up to `exact_max` vectors it is a flat int8 matrix
scanned whole per query (flat.py), rebuilt from the rows when the collection is opened. Above
that it is an HNSW graph (index.py), saved beside the database now and then and on close, and
reconciled with the rows when it is opened (rows missing from it are added, keys of deleted
rows removed), so a crash between a commit and an index save costs a short catch-up, never
data. A flat collection that grows past the threshold keeps answering from its flat index while
the graph is built on a background thread, then switches.

Either index only proposes candidates: the store scores them again with the float32 vectors of
their rows, so the scores returned are exact cosines and the order is theirs.

Collections belong to an owner (the API key id that created them; "" with auth off): another
owner sees none of them. Each records the model id and the dimension of its vectors; a service
running another model refuses to touch it.

Not thread-safe by itself: every method runs under one lock, so callers may use a thread pool.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.runtime.errors import AlreadyExists, FailedPrecondition, NotFound
from services.vision.collections.flat import FlatIndex
from services.vision.collections.index import HnswIndex

NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# An index is saved after this many changed rows (and on close), bounding the catch-up work
# after a crash.
SAVE_EVERY_CHANGES = 5000
# A filtered search asks the index for this many times top_k candidates before it falls back to
# an exact scan of the rows that match the filter.
FILTER_OVERFETCH = 20
# Collections up to this many vectors are searched by a full scan of their int8 codes: about
# 2.5 ms per 100,000 x 512 on the 2-core CPU machine, so 200,000 stays near 5 ms.
EXACT_MAX_VECTORS = 200_000
# The index is asked for this many times top_k candidates (and at least RERANK_MIN), which the
# float32 rows then order exactly.
RERANK_FACTOR = 4
RERANK_MIN = 40
# Rows read from SQLite per query when an index is built or reconciled.
_READ_CHUNK = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    dimension INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (owner, name)
);
CREATE TABLE IF NOT EXISTS items (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    vector BLOB NOT NULL,
    metadata TEXT NOT NULL,
    UNIQUE (owner, collection, id)
);
CREATE INDEX IF NOT EXISTS items_of_collection ON items (owner, collection, key);
"""


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dimension: int
    model_id: str
    count: int
    created: float


@dataclass(frozen=True)
class Item:
    id: str
    metadata: dict[str, str]
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict[str, str]
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class Hits:
    hits: list[Hit]
    exact: bool


@dataclass(frozen=True)
class Upserted:
    upserted: int
    replaced: int


@dataclass
class _Open:
    """A collection whose index is in memory."""

    index: FlatIndex | HnswIndex
    path: Path
    changes: int = 0
    keys: set[int] = field(default_factory=set)
    # The graph being built to replace a flat index that outgrew the threshold.
    promoting: threading.Thread | None = None


class CollectionStore:
    def __init__(
        self, folder: Path, model_id: str, dimension: int, exact_max: int = EXACT_MAX_VECTORS
    ) -> None:
        self.folder = folder
        self.model_id = model_id
        self.dimension = dimension
        self.exact_max = exact_max
        self._closing = threading.Event()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "indexes").mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            folder / "collections.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # Durable against a killed process (the WAL is written before the commit returns);
        # FULL would also survive power loss, at a sync per upsert.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._open: dict[tuple[str, str], _Open] = {}

    # --- collections ---------------------------------------------------------------------

    def create(self, owner: str, name: str, exist_ok: bool) -> tuple[CollectionInfo, bool]:
        with self._lock:
            found = self._row(owner, name)
            if found is not None:
                if not exist_ok:
                    raise AlreadyExists(f"collection {name!r} exists")
                return self._checked(owner, found), False
            with self._transaction():
                self._db.execute(
                    "INSERT INTO collections VALUES (?, ?, ?, ?, ?)",
                    (owner, name, self.dimension, self.model_id, time.time()),
                )
            return self._info(owner, self._require(owner, name)), True

    def delete(self, owner: str, name: str) -> int:
        with self._lock:
            self._require(owner, name)
            with self._transaction():
                count = self._db.execute(
                    "DELETE FROM items WHERE owner = ? AND collection = ?", (owner, name)
                ).rowcount
                self._db.execute(
                    "DELETE FROM collections WHERE owner = ? AND name = ?", (owner, name)
                )
            self._open.pop((owner, name), None)
            self._index_path(owner, name).unlink(missing_ok=True)
            return count

    def list(self, owner: str) -> list[CollectionInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, dimension, model_id, created FROM collections WHERE owner = ? "
                "ORDER BY name",
                (owner,),
            ).fetchall()
            return [self._info(owner, row) for row in rows]

    # --- items ---------------------------------------------------------------------------

    def upsert(
        self,
        owner: str,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[Mapping[str, str]],
    ) -> Upserted:
        """Stores unit vectors under ids (replacing existing ones) in one transaction; an id
        given twice keeps its last vector."""
        vectors = np.asarray(vectors, dtype=np.float32)
        last = {item_id: i for i, item_id in enumerate(ids)}
        order = list(last.values())
        unique = [ids[i] for i in order]
        rows = [
            (
                owner,
                name,
                ids[i],
                vectors[i].tobytes(),
                json.dumps(dict(metadata[i]), sort_keys=True),
            )
            for i in order
        ]
        with self._lock:
            opened = self._opened(owner, name)
            with self._transaction():
                replaced_keys = list(self._keys_of(owner, name, unique).values())
                self._db.executemany(
                    "DELETE FROM items WHERE key = ?", [(key,) for key in replaced_keys]
                )
                self._db.executemany(
                    "INSERT INTO items (owner, collection, id, vector, metadata) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                key_of = self._keys_of(owner, name, unique)
            # Committed: from here on a crash only costs the index a catch-up on reopen.
            new_keys = [key_of[item_id] for item_id in unique]
            opened.index.remove(np.array(replaced_keys, dtype=np.int64))
            opened.keys.difference_update(replaced_keys)
            opened.index.add(np.array(new_keys, dtype=np.int64), vectors[order])
            opened.keys.update(new_keys)
            self._changed(opened, len(new_keys) + len(replaced_keys))
            self._promote_if_large(owner, name, opened)
            return Upserted(len(new_keys), len(replaced_keys))

    def delete_items(self, owner: str, name: str, ids: Sequence[str]) -> int:
        with self._lock:
            opened = self._opened(owner, name)
            keys: list[int] = []
            with self._transaction():
                for item_id in dict.fromkeys(ids):
                    row = self._db.execute(
                        "DELETE FROM items WHERE owner = ? AND collection = ? AND id = ? "
                        "RETURNING key",
                        (owner, name, item_id),
                    ).fetchone()
                    if row is not None:
                        keys.append(row[0])
            opened.index.remove(np.array(keys, dtype=np.int64))
            opened.keys.difference_update(keys)
            self._changed(opened, len(keys))
            return len(keys)

    def check(self, owner: str, name: str) -> CollectionInfo:
        """The collection, when it exists and holds this service's model's vectors."""
        with self._lock:
            return self._checked(owner, self._require(owner, name))

    def index_kind(self, owner: str, name: str) -> str:
        """Which index answers this collection now: "flat" (a full scan) or "hnsw" (a graph)."""
        with self._lock:
            return "hnsw" if isinstance(self._opened(owner, name).index, HnswIndex) else "flat"

    def get(
        self, owner: str, name: str, ids: Sequence[str], with_vectors: bool
    ) -> tuple[list[Item], list[str]]:
        with self._lock:
            self._checked(owner, self._require(owner, name))
            items: list[Item] = []
            missing: list[str] = []
            for item_id in ids:
                row = self._db.execute(
                    "SELECT vector, metadata FROM items "
                    "WHERE owner = ? AND collection = ? AND id = ?",
                    (owner, name, item_id),
                ).fetchone()
                if row is None:
                    missing.append(item_id)
                    continue
                vector = _vector(row[0]) if with_vectors else None
                items.append(Item(item_id, json.loads(row[1]), vector))
            return items, missing

    def vector_of(self, owner: str, name: str, item_id: str, field_name: str) -> np.ndarray:
        with self._lock:
            self._checked(owner, self._require(owner, name))
            row = self._db.execute(
                "SELECT vector FROM items WHERE owner = ? AND collection = ? AND id = ?",
                (owner, name, item_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"{field_name}: no item {item_id!r} in collection {name!r}")
            return _vector(row[0])

    # --- search --------------------------------------------------------------------------

    def search(
        self,
        owner: str,
        name: str,
        query: np.ndarray,
        top_k: int,
        where: Mapping[str, str],
        with_vectors: bool,
        exclude: str | None = None,
    ) -> Hits:
        """The nearest items to a unit vector; with `where`, only items whose metadata match.
        The index proposes candidates, which the rows' float32 vectors then order; a filter
        too selective for the candidates gets an exact scan of the matching rows."""
        query = np.asarray(query, dtype=np.float32)
        with self._lock:
            opened = self._opened(owner, name)
            wanted = top_k + (1 if exclude is not None else 0)
            ask = max(wanted * RERANK_FACTOR, RERANK_MIN)
            if where:
                ask = max(ask, wanted * FILTER_OVERFETCH)
            keys, _ = opened.index.search(query, ask)
            hits = self._reranked(keys, query, top_k, where, with_vectors, exclude)
            enough = len(hits) >= top_k or len(keys) >= len(opened.keys)
            if enough or not where:
                return Hits(hits, exact=False)
            return Hits(self._exact(owner, name, query, top_k, where, with_vectors, exclude), True)

    def _reranked(
        self,
        keys: np.ndarray,
        query: np.ndarray,
        top_k: int,
        where: Mapping[str, str],
        with_vectors: bool,
        exclude: str | None,
    ) -> list[Hit]:
        """The best `top_k` of the candidate rows by exact cosine, filtered by `where`."""
        if not len(keys):
            return []
        marks = ",".join("?" * len(keys))
        rows = self._db.execute(
            f"SELECT id, metadata, vector FROM items WHERE key IN ({marks})",
            [int(k) for k in keys],
        ).fetchall()
        if not rows:
            return []
        matrix = np.frombuffer(b"".join(row[2] for row in rows), dtype=np.float32)
        matrix = matrix.reshape(len(rows), self.dimension)
        scores = matrix @ query
        hits: list[Hit] = []
        for i in np.argsort(-scores, kind="stable").tolist():
            item_id, metadata_json, _ = rows[i]
            if item_id == exclude:
                continue
            metadata = json.loads(metadata_json)
            if any(metadata.get(k) != v for k, v in where.items()):
                continue
            vector = matrix[i].copy() if with_vectors else None
            hits.append(Hit(item_id, float(scores[i]), metadata, vector))
            if len(hits) == top_k:
                break
        return hits

    def _exact(
        self,
        owner: str,
        name: str,
        query: np.ndarray,
        top_k: int,
        where: Mapping[str, str],
        with_vectors: bool,
        exclude: str | None,
    ) -> list[Hit]:
        clauses = "".join(" AND json_extract(metadata, ?) = ?" for _ in where)
        params: list[str] = [owner, name]
        for key, value in where.items():
            params += [_json_path(key), value]
        rows = self._db.execute(
            "SELECT id, metadata, vector FROM items WHERE owner = ? AND collection = ?" + clauses,
            params,
        ).fetchall()
        rows = [row for row in rows if row[0] != exclude]
        if not rows:
            return []
        matrix = np.stack([_vector(row[2]) for row in rows])
        scores = matrix @ query.astype(np.float32)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [
            Hit(
                rows[i][0],
                float(scores[i]),
                json.loads(rows[i][1]),
                matrix[i].copy() if with_vectors else None,
            )
            for i in order.tolist()
        ]

    # --- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Stops graph builds, saves every changed graph, then closes the database."""
        self._closing.set()
        with self._lock:
            builders = [o.promoting for o in self._open.values() if o.promoting is not None]
        for builder in builders:
            builder.join()
        with self._lock:
            for opened in self._open.values():
                if opened.changes and isinstance(opened.index, HnswIndex):
                    opened.index.save(opened.path)
                    opened.changes = 0
            self._open.clear()
            self._db.close()

    # --- internals -----------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _row(self, owner: str, name: str) -> tuple[str, int, str, float] | None:
        row = self._db.execute(
            "SELECT name, dimension, model_id, created FROM collections "
            "WHERE owner = ? AND name = ?",
            (owner, name),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3])

    def _require(self, owner: str, name: str) -> tuple[str, int, str, float]:
        row = self._row(owner, name)
        if row is None:
            raise NotFound(f"no collection {name!r}")
        return row

    def _checked(self, owner: str, row: tuple[str, int, str, float]) -> CollectionInfo:
        info = self._info(owner, row)
        if info.model_id != self.model_id or info.dimension != self.dimension:
            raise FailedPrecondition(
                f"collection {info.name!r} holds {info.dimension}-d vectors of "
                f"{info.model_id!r}; this service runs {self.model_id!r} "
                f"({self.dimension}-d). Use a service with that model, or a new collection"
            )
        return info

    def _info(self, owner: str, row: tuple[str, int, str, float]) -> CollectionInfo:
        name, dimension, model_id, created = row
        count = self._db.execute(
            "SELECT COUNT(*) FROM items WHERE owner = ? AND collection = ?", (owner, name)
        ).fetchone()[0]
        return CollectionInfo(name, dimension, model_id, count, created)

    def _index_path(self, owner: str, name: str) -> Path:
        digest = hashlib.sha256(f"{owner}\0{name}".encode()).hexdigest()[:32]
        return self.folder / "indexes" / f"{digest}.usearch"

    def _keys_of(self, owner: str, name: str, ids: Sequence[str]) -> dict[str, int]:
        """The row keys of those ids that are stored."""
        found: dict[str, int] = {}
        for start in range(0, len(ids), 900):
            chunk = list(ids[start : start + 900])
            marks = ",".join("?" * len(chunk))
            found.update(
                self._db.execute(
                    "SELECT id, key FROM items WHERE owner = ? AND collection = ? "
                    f"AND id IN ({marks})",
                    [owner, name, *chunk],
                ).fetchall()
            )
        return found

    def _stored_keys(self, owner: str, name: str) -> set[int]:
        return {
            row[0]
            for row in self._db.execute(
                "SELECT key FROM items WHERE owner = ? AND collection = ?", (owner, name)
            )
        }

    def _add_rows(self, index: FlatIndex | HnswIndex, keys: Sequence[int]) -> None:
        """Adds the rows under these keys to an index, a chunk at a time."""
        for start in range(0, len(keys), _READ_CHUNK):
            index.add(*self._read_vectors(keys[start : start + _READ_CHUNK]))

    def _reconcile(self, index: FlatIndex | HnswIndex, stored: set[int]) -> int:
        """Brings an index to the stored keys; returns how many keys changed."""
        indexed = set(index.keys().tolist())
        stale = sorted(indexed - stored)
        index.remove(np.array(stale, dtype=np.int64))
        missing = sorted(stored - indexed)
        self._add_rows(index, missing)
        return len(stale) + len(missing)

    def _opened(self, owner: str, name: str) -> _Open:
        """The collection's index, built or loaded (and reconciled with the rows) on first use."""
        opened = self._open.get((owner, name))
        if opened is not None:
            return opened
        self._checked(owner, self._require(owner, name))
        path = self._index_path(owner, name)
        stored = self._stored_keys(owner, name)
        index: FlatIndex | HnswIndex
        if self.exact_max > 0 and len(stored) <= self.exact_max:
            index = FlatIndex(self.dimension)
            self._add_rows(index, sorted(stored))
            # A graph saved while the collection was larger would be stale when it grows back.
            path.unlink(missing_ok=True)
            changes = 0
        else:
            index = HnswIndex.load(path, self.dimension) or HnswIndex(self.dimension)
            changes = self._reconcile(index, stored)
        opened = _Open(index, path, changes=changes, keys=stored)
        self._open[(owner, name)] = opened
        return opened

    def _changed(self, opened: _Open, count: int) -> None:
        opened.changes += count
        if opened.changes >= SAVE_EVERY_CHANGES and isinstance(opened.index, HnswIndex):
            opened.index.save(opened.path)
            opened.changes = 0

    def _promote_if_large(self, owner: str, name: str, opened: _Open) -> None:
        """Starts building the graph of a flat collection that outgrew the threshold."""
        if (
            isinstance(opened.index, HnswIndex)
            or opened.promoting is not None
            or len(opened.keys) <= self.exact_max
        ):
            return
        opened.promoting = threading.Thread(
            target=self._promote,
            args=(owner, name, opened),
            name=f"collection-graph-{name}",
            daemon=True,
        )
        opened.promoting.start()

    def _promote(self, owner: str, name: str, opened: _Open) -> None:
        """Builds the graph from a snapshot of the rows without the lock (searches and upserts
        go on against the flat index), then, under the lock, catches up with what changed
        meanwhile and swaps it in."""
        graph = HnswIndex(self.dimension)
        with self._lock:
            if self._open.get((owner, name)) is not opened:
                return
            snapshot = sorted(opened.keys)
        for start in range(0, len(snapshot), _READ_CHUNK):
            if self._closing.is_set():
                break
            with self._lock:
                if self._open.get((owner, name)) is not opened:
                    return
                rows = self._read_vectors(snapshot[start : start + _READ_CHUNK])
            graph.add(*rows)
        with self._lock:
            opened.promoting = None
            if self._closing.is_set() or self._open.get((owner, name)) is not opened:
                return
            self._reconcile(graph, opened.keys)
            graph.save(opened.path)
            opened.index = graph
            opened.changes = 0

    def _read_vectors(self, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        marks = ",".join("?" * len(keys))
        rows = self._db.execute(
            f"SELECT key, vector FROM items WHERE key IN ({marks})", list(keys)
        ).fetchall()
        vectors = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32)
        return (
            np.array([row[0] for row in rows], dtype=np.int64),
            vectors.reshape(len(rows), self.dimension),
        )


def _vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32).copy()


def _json_path(key: str) -> str:
    """A JSON path naming one top-level key, quoted so any key text is taken literally."""
    return "$." + json.dumps(key)
