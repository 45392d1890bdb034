"""t2i: text-to-image and image-to-image with diffusers pipelines (HunyuanDiT, Qwen-Image, the
Stable Diffusion family, FLUX and anything AutoPipeline loads), served by `python -m
services.t2i`. The capability object lives in `services.t2i.capability`."""
