"""Settings every chat capability shares: the token budget of a reply and the size of a
conversation, checked together at start.

A capability picks its own defaults for the request-size limits by redeclaring a field with the
type below (`max_images: MaxImages = 4`); bounds and descriptions stay here.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, model_validator

from services.runtime.chat.sampling import ServiceDefaults
from services.runtime.config import ServiceSettings

MaxNewTokens = Annotated[
    int, Field(ge=1, description="Upper bound of a request's max_new_tokens (larger is capped).")
]
MaxMessages = Annotated[int, Field(ge=1, description="Most messages per request.")]
MaxImages = Annotated[
    int, Field(ge=0, description="Most images per request, all messages together.")
]


class ChatSettings(ServiceSettings):
    """The shared server settings plus the chat limits (GetModelInfo reports them)."""

    max_context_tokens: int = Field(
        0,
        ge=0,
        description="Context length (prompt + answer) in tokens; 0 uses the model's own, a "
        "smaller value caps it (memory).",
    )
    default_max_new_tokens: int = Field(
        256, ge=1, description="max_new_tokens of requests that leave it unset."
    )
    max_new_tokens: MaxNewTokens = 4096
    max_messages: MaxMessages = 64
    max_images: MaxImages = 16
    batching: bool = Field(
        True,
        description="Iteration-level batching of chat decoding: a request joins the running "
        "decode batch at the next token and leaves it when done (each with its own sampling, "
        "stop sequences, limit and cancel); off runs one request at a time.",
    )
    batch_max_size: int = Field(8, ge=1, description="Most requests decoding together.")
    batch_prefill_tokens: int = Field(
        0,
        ge=0,
        description="Most tokens one prefill of newcomers computes (rows x longest prompt); "
        "newcomers past it prefill at the next step, so running rows wait less and the first "
        "newcomers start sooner. 0: all newcomers of a step prefill together.",
    )

    @model_validator(mode="after")
    def _check_token_budget(self) -> Self:
        if self.default_max_new_tokens > self.max_new_tokens:
            raise ValueError("default_max_new_tokens must be <= max_new_tokens")
        return self

    def sampling_defaults(self) -> ServiceDefaults:
        """What a request's unset max_new_tokens becomes, and its cap."""
        return ServiceDefaults(
            default_max_new_tokens=self.default_max_new_tokens,
            max_new_tokens=self.max_new_tokens,
        )
