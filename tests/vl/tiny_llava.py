"""A tiny LLaVA (CLIP vision tower + Qwen2 language model) for the "any AutoModelForImageText-
ToText model" path: a family the service has no special code for, with a fixed-resolution
image processor and no video processor. Test-only; the service's own builders are the Qwen
ones in services.vl.builtin.qwen."""

from __future__ import annotations

from pathlib import Path

from services.runtime.model_cache import cached_model_dir
from services.runtime.tokenizers import QWEN_VOCAB_SIZE, qwen_tokenizer

IMAGE_SIDE = 56
PATCH = 14
IMAGE_TOKEN = "<image>"
# A plain LLaVA-style template over content lists: images become <image> where they stand.
TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)
_SPEC = {"family": "llava", "hidden": 64, "layers": 2, "vision_hidden": 32, "version": 1}


def tiny_llava_dir() -> Path:
    return cached_model_dir("llava-tiny", _SPEC, _build)


def _build(folder: Path) -> None:
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = qwen_tokenizer([IMAGE_TOKEN], chat_template=TEMPLATE, model_max_length=2048)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config = LlavaConfig(
        text_config=Qwen2Config(
            vocab_size=QWEN_VOCAB_SIZE,
            hidden_size=_SPEC["hidden"],
            intermediate_size=2 * _SPEC["hidden"],
            num_hidden_layers=_SPEC["layers"],
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            initializer_range=0.3,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=_SPEC["vision_hidden"],
            intermediate_size=2 * _SPEC["vision_hidden"],
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIDE,
            patch_size=PATCH,
        ),
        image_token_index=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=(IMAGE_SIDE // PATCH) ** 2,
        initializer_range=0.3,
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=151645, pad_token_id=151643)
    model.save_pretrained(folder)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIDE},
            crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE},
        ),
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=TEMPLATE,
    )
    processor.save_pretrained(folder)
