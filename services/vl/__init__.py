"""The vl capability: chat about one or more images with Qwen2.5-VL, Qwen2-VL or any
transformers image-text-to-text model, unary and token streaming (mmserve.vl.v1).

Run it with `python -m services.vl`; `services.vl.capability.CAPABILITY` is what the runtime
serves.
"""
