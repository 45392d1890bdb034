"""The vision capability: CLIP, SigLIP/SigLIP2 and DINOv2/DINOv3 embeddings, similarity,
zero-shot classification and ranking over gRPC (mmserve.vision.v1). `capability.CAPABILITY` is
what the runtime serves; `python -m services.vision` runs it."""
