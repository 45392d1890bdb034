"""Scores from embeddings: plain numpy, so tests can check the service against the same math."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_EPS = 1e-12


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (an all-zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, _EPS)).astype(np.float32)


def cosine(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(Q, C) cosine similarities of two sets of row vectors."""
    return l2_normalize(queries) @ l2_normalize(candidates).T


def model_logits(cosines: np.ndarray, scale: float, bias: float) -> np.ndarray:
    """The model's own logits: CLIP scales cosines by exp(logit_scale); SigLIP adds its bias."""
    return (cosines * np.float32(scale) + np.float32(bias)).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)


def label_embeddings(text_vectors: np.ndarray, labels: int, templates: int) -> np.ndarray:
    """One unit vector per label: the normalized mean of its templates' normalized embeddings
    (CLIP's prompt ensembling). Rows are label-major: label 0 with every template, then 1."""
    per_label = l2_normalize(text_vectors).reshape(labels, templates, -1)
    return l2_normalize(per_label.mean(axis=1))


def expand_templates(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Label-major prompts; "{}" is replaced literally (str.format would choke on other braces)."""
    return [template.replace("{}", label) for label in labels for template in templates]


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k best scores, best first; ties keep request order. k=0 means all."""
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in (order if k <= 0 else order[:k])]
