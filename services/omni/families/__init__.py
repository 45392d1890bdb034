"""Model families the omni engine serves, picked from the model folder's own config.json."""

from __future__ import annotations

from pathlib import Path

from services.omni.families.base import Family
from services.runtime.devices import TorchOptions
from services.runtime.model_source import ModelFamily

QWEN_OMNI_TYPES = frozenset({"qwen2_5_omni"})
QWEN3_OMNI_TYPES = frozenset({"qwen3_omni_moe"})
MINICPM_O_TYPES = frozenset({"minicpmo", "minicpm_o"})


def create_family(
    folder: Path,
    found: ModelFamily,
    options: TorchOptions,
    *,
    max_context_tokens: int,
    talker_max_new_tokens: int,
    trust_remote_code: bool,
    speech_chunk_codes: int = 0,
) -> Family:
    """The adapter for the model in `folder`; ValueError naming what is unsupported."""
    if found.library != "transformers":
        raise ValueError(f"{folder} is a {found.library} model, not a chat or omni model")
    if found.model_type in QWEN_OMNI_TYPES:
        from services.omni.families.qwen_omni import QwenOmniFamily

        return QwenOmniFamily(
            folder,
            options,
            max_context_tokens=max_context_tokens,
            talker_max_new_tokens=talker_max_new_tokens,
            speech_chunk_codes=speech_chunk_codes,
        )
    if found.model_type in QWEN3_OMNI_TYPES:
        from services.omni.families.qwen3_omni import Qwen3OmniFamily

        return Qwen3OmniFamily(
            folder,
            options,
            max_context_tokens=max_context_tokens,
            talker_max_new_tokens=talker_max_new_tokens,
            speech_chunk_codes=speech_chunk_codes,
        )
    if found.model_type in MINICPM_O_TYPES or found.class_name.startswith("MiniCPMO"):
        if not trust_remote_code:
            raise ValueError(
                f"{folder} is MiniCPM-o, whose code lives in the model folder: "
                "set trust_remote_code = true to load it"
            )
        from services.omni.families.minicpm_o import MiniCpmOFamily

        return MiniCpmOFamily(folder, options, max_context_tokens=max_context_tokens)
    if found.needs_remote_code and not trust_remote_code:
        raise ValueError(f"{folder} needs its own code: set trust_remote_code = true")
    if found.class_name and not found.class_name.endswith("ForCausalLM"):
        raise ValueError(
            f"{folder} holds a {found.class_name}; omni serves Qwen2.5-Omni, Qwen3-Omni, "
            "MiniCPM-o and chat LLMs (…ForCausalLM with a chat template)"
        )
    from services.omni.families.chat_llm import ChatLlmFamily

    return ChatLlmFamily(
        folder, options, max_context_tokens=max_context_tokens, trust_remote_code=trust_remote_code
    )
