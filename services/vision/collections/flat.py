"""The flat (full-scan) index of a collection: every vector as int8 codes in one contiguous matrix,
scanned whole for each query.

Measured on the 2-core CPU machine (bench/RESULTS.md, "Collections"): a query against 100,000
x 512 codes (51 MB) takes about 2.5 ms with numkong's int8 dot kernels (AVX-512 VNNI here),
against 8-10 ms for a float32 matrix-vector product and 4.5-15 ms for usearch's brute force
(int8 to float32). Each row is quantized with its own scale (its largest component maps to
127), so outlier dimensions of real embeddings cost precision only in their own row. The scores
are approximate: the store reranks a few times top_k candidates with the exact float32 vectors
of its rows, which put recall@10 at 1.0 on random vectors (the worst case) with 20 candidates
or more.

Not persisted: it is rebuilt from the rows when a collection is opened (about a second per
100,000 rows), so there is no file to tear.
"""

from __future__ import annotations

import numkong
import numpy as np
import torch

_INITIAL_CAPACITY = 1024


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 scale per row) with codes * scale ~= vectors."""
    vectors = np.asarray(vectors, dtype=np.float32)
    peaks = np.abs(vectors).max(axis=1) if vectors.size else np.zeros(len(vectors), np.float32)
    scales = np.where(peaks > 0, peaks / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(vectors / scales[:, None]), -127, 127).astype(np.int8)
    return codes, scales


class FlatIndex:
    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._codes = np.zeros((_INITIAL_CAPACITY, dimension), dtype=np.int8)
        self._scales = np.zeros(_INITIAL_CAPACITY, dtype=np.float32)
        self._keys = np.zeros(_INITIAL_CAPACITY, dtype=np.int64)
        self._row_of: dict[int, int] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def keys(self) -> np.ndarray:
        return self._keys[: self._count].copy()

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Adds rows under new keys (a key already present is replaced)."""
        if not len(keys):
            return
        present = [int(k) for k in keys.tolist() if int(k) in self._row_of]
        self.remove(np.array(present, dtype=np.int64))
        self._reserve(self._count + len(keys))
        codes, scales = quantize(vectors)
        end = self._count + len(keys)
        self._codes[self._count : end] = codes
        self._scales[self._count : end] = scales
        self._keys[self._count : end] = keys
        for offset, key in enumerate(keys.tolist()):
            self._row_of[int(key)] = self._count + offset
        self._count = end

    def remove(self, keys: np.ndarray) -> None:
        """Each removed row is filled with the last one, so the matrix stays contiguous."""
        for key in keys.tolist():
            row = self._row_of.pop(int(key), None)
            if row is None:
                continue
            last = self._count - 1
            if row != last:
                moved = int(self._keys[last])
                self._codes[row] = self._codes[last]
                self._scales[row] = self._scales[last]
                self._keys[row] = moved
                self._row_of[moved] = row
            self._count = last

    def search(self, vector: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, approximate cosine similarities) of the `count` best, best first."""
        count = min(count, self._count)
        if count <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        codes, scale = quantize(np.asarray(vector, dtype=np.float32)[None])
        dots = numkong.cdist(codes, self._codes[: self._count], metric="dot", out_dtype="float32")
        scores = np.asarray(dots)[0] * self._scales[: self._count] * scale[0]
        # torch's partial selection is about 5x faster than numpy's argpartition on 100k scores.
        best = torch.topk(torch.from_numpy(scores), count, sorted=True)
        rows = best.indices.numpy()
        return self._keys[rows].copy(), best.values.numpy().copy()

    def _reserve(self, size: int) -> None:
        capacity = len(self._keys)
        if size <= capacity:
            return
        while capacity < size:
            capacity *= 2
        codes = np.zeros((capacity, self.dimension), dtype=np.int8)
        codes[: self._count] = self._codes[: self._count]
        scales = np.zeros(capacity, dtype=np.float32)
        scales[: self._count] = self._scales[: self._count]
        keys = np.zeros(capacity, dtype=np.int64)
        keys[: self._count] = self._keys[: self._count]
        self._codes, self._scales, self._keys = codes, scales, keys
