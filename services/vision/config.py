"""Settings of the vision service (CLI > env MMSERVE_* > TOML [vision] > defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from services.runtime.builtin import model_field
from services.runtime.config import ServiceSettings
from services.runtime.threads import OpenMPWaitPolicy
from services.vision.builtin import BUILTINS


class VisionSettings(ServiceSettings):
    """mmserve vision service: CLIP, SigLIP/SigLIP2 and DINOv2/DINOv3 embeddings, similarity,
    zero-shot classification and ranking, micro-batched on one device."""

    section = "vision"

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        9093, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 free, unset off."
    )
    model: str = model_field(BUILTINS)
    # --- batching ---
    max_batch_size: int = Field(
        32,
        ge=1,
        description="Most requests of one kind (image or text) coalesced into one micro-batch.",
    )
    max_batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description=(
            "How long the oldest queued request waits for companions. 0 batches whatever queued "
            "while the device was busy, so a lone client pays no wait."
        ),
    )
    max_arrival_wait_ms: float = Field(
        0.0,
        ge=0,
        description=(
            "When the device is free and other requests' images are still being decoded, how "
            "long the next batch may wait for them, so a burst shares one forward pass instead "
            "of the first image running alone. A lone client never waits; 0 turns it off."
        ),
    )
    max_return_wait_ms: float = Field(
        80.0,
        ge=0,
        description=(
            "When a batch ends, how long the next one may wait for the clients it just answered "
            "to send again (up to as many jobs as that batch and the queue held; never more than "
            "10% of the time the batch ran), so N looping clients share one forward pass "
            "instead of alternating halves. A lone client never waits; 0 turns it off."
        ),
    )
    max_device_batch: int = Field(
        64,
        ge=1,
        description=(
            "Most images or texts in one job: larger requests are split into parts of this "
            "size, each queued as soon as it is preprocessed (while the previous part runs). "
            "A micro-batch runs up to max_batch_size jobs in one forward pass; on out-of-memory "
            "the batch is split and max_batch_size lowered."
        ),
    )
    torch_threads: int = Field(
        0, ge=0, description="Intra-op threads torch uses on CPU; 0 keeps torch's default."
    )
    openmp_wait_policy: OpenMPWaitPolicy = Field(
        "inherit",
        description=(
            "How torch's idle CPU threads wait (passive, active, inherit). inherit (OpenMP's "
            "own bounded spin, then sleep) measured best here at 1 and 16 clients; passive "
            "cost 15-20 ms per single-image call on 2 cores (bench/RESULTS.md). Applied before "
            "torch loads; an OMP_WAIT_POLICY in the environment wins."
        ),
    )
    # --- request limits ---
    max_images_per_request: int = Field(256, ge=1, description="Most images in one request.")
    max_upsert_items: int = Field(
        1024, ge=1, description="Most items in one UpsertItems, DeleteItems or GetItems call."
    )
    data_dir: Path = Field(
        Path("vision-data"),
        description=(
            "Folder for collections: their rows (SQLite) and approximate-nearest-neighbour indexes."
        ),
    )
    collection_exact_max_vectors: int = Field(
        200_000,
        ge=0,
        description=(
            "Collections up to this many vectors are searched by a full int8 scan reranked "
            "exactly (recall 1.0 on the bench, about 2.5 ms per 100,000 x 512 on a 2-core "
            "CPU); larger ones by an HNSW graph, built in the background when one grows past it "
            "(0: always a graph)."
        ),
    )
    max_images_per_stream: int = Field(
        100_000,
        ge=1,
        description=(
            "Most images in one StreamImageEmbeddings call (pass them as URIs under "
            "allowed_uri_prefixes to stay within max_message_mb)."
        ),
    )
    max_texts_per_request: int = Field(256, ge=1, description="Most texts in one request.")
    max_items_per_request: int = Field(
        256, ge=1, description="Most items per side of ComputeSimilarity and candidates of Rank."
    )
    max_labels: int = Field(1000, ge=1, description="Most labels in ClassifyZeroShot.")
    max_templates: int = Field(
        32, ge=1, description="Most prompt templates in ClassifyZeroShot (labels x templates)."
    )
    max_text_chars: int = Field(2000, ge=1, description="Longest text or label, in characters.")
    # --- defaults ---
    default_pooling: Literal["cls", "mean"] = Field(
        "cls", description="DINO pooling when a request leaves it unspecified."
    )
    # --- preprocessing ---
    preprocess_in_batch: Literal["auto", "on", "off"] = Field(
        "auto",
        description=(
            "Where decoded images are resized and normalized: on = on every core just before "
            "the batch's forward pass, off = in the CPU pool beside the running batch; auto = "
            "on for a CPU device (the model already uses every core), off for accelerators."
        ),
    )
    exact_fast_preprocessing: bool = Field(
        True,
        description=(
            "Use the engine's reimplementation of the image processor when it verifies equal to "
            "the processor at load; false always runs the processor."
        ),
    )
