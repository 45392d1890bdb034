"""API keys and the token-bucket rate limiter as plain logic."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.runtime import errors
from services.runtime.security import KeyStore, RateLimiter


def test_keys_from_settings_and_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# operators\nops:file-secret\n\n")
    store = KeyStore.from_sources(["ci:env-secret", "bare-secret"], path)
    assert store.enabled
    assert store.authenticate("Bearer env-secret") == "ci"
    assert store.authenticate("bearer file-secret") == "ops"
    bare = store.authenticate("Bearer bare-secret")
    assert bare.startswith("key-")
    assert "bare" not in bare


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer wrong"])
def test_bad_credentials(header: str | None) -> None:
    store = KeyStore(["ci:secret"])
    with pytest.raises(errors.Unauthenticated):
        store.authenticate(header)


def test_no_keys_means_auth_off() -> None:
    assert not KeyStore([]).enabled


def test_token_bucket() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    for _ in range(3):
        limiter.acquire("a", now=100.0)
    with pytest.raises(errors.ResourceExhausted) as caught:
        limiter.acquire("a", now=100.0)
    assert caught.value.retry_after_seconds == pytest.approx(0.5)
    limiter.acquire("b", now=100.0)  # callers have their own buckets
    limiter.acquire("a", now=100.6)  # refilled 1.2 tokens


def test_rate_limit_off() -> None:
    limiter = RateLimiter(rate=0, burst=1)
    for _ in range(100):
        limiter.acquire("a")
