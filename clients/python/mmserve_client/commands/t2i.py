"""`generate` and `edit`: text-to-image and image-to-image with a step progress bar."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..clients import T2IClient
from ..results import Generation
from ..wire.t2i import GenerateOptions
from .context import Context

DEFAULT_OUTPUT = "mmserve-{seed}"


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        default=DEFAULT_OUTPUT,
        help=(
            "output file; {i} (image index), {seed} (the image's seed) and {job} are replaced; "
            "several images without {i} or {seed} get -0, -1... before the suffix; without a "
            "suffix, the format's is added "
            f"(default: {DEFAULT_OUTPUT})"
        ),
    )
    parser.add_argument("-n", "--negative-prompt", help="what to avoid")
    parser.add_argument("-W", "--width", type=int, help="width in pixels")
    parser.add_argument("-H", "--height", type=int, help="height in pixels")
    parser.add_argument("-s", "--steps", type=int, help="denoising steps")
    parser.add_argument("-g", "--guidance-scale", type=float, help="classifier-free guidance")
    parser.add_argument("--seed", type=int, help="random seed (printed when left out)")
    parser.add_argument(
        "--scheduler",
        help="scheduler class for this job, e.g. EulerDiscreteScheduler (the service lists "
        "its compatible ones: mmserve info t2i)",
    )
    parser.add_argument(
        "--lora",
        action="append",
        type=_lora,
        metavar="NAME[:WEIGHT]",
        help="apply the service's LoRA adapter NAME at WEIGHT (default 1.0); repeat to mix",
    )
    parser.add_argument("--num-images", type=int, help="images to generate")
    parser.add_argument("--format", choices=["png", "jpeg", "webp"], help="output encoding")
    parser.add_argument("--quality", type=int, help="JPEG/WebP quality 1..100")
    parser.add_argument(
        "--preview-every", type=int, default=0, help="request a preview every N steps"
    )
    parser.add_argument("--preview-dir", help="write previews here (preview-0001.png, ...)")
    parser.add_argument("--no-stream", action="store_true", help="one unary call (no progress bar)")


def options(args: argparse.Namespace) -> GenerateOptions:
    chosen: dict[str, Any] = {
        "negative_prompt": args.negative_prompt,
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "seed": args.seed,
        "num_images": args.num_images,
        "output_format": args.format,
        "output_quality": args.quality,
        "scheduler": args.scheduler,
        "adapters": args.lora,
    }
    return {k: v for k, v in chosen.items() if v is not None}  # type: ignore[return-value]


def _lora(text: str) -> tuple[str, float]:
    name, _, weight = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME or NAME:WEIGHT")
    try:
        return name, float(weight) if weight else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: WEIGHT must be a number") from None


def output_paths(pattern: str, generation: Generation) -> list[Path]:
    paths = []
    count = len(generation.encoded)
    for index, image in enumerate(generation.encoded):
        name = pattern
        if count > 1 and "{i}" not in name and "{seed}" not in name:
            path = Path(name)
            name = str(path.with_name(f"{path.stem}-{{i}}{path.suffix}"))
        name = name.format(i=index, seed=generation.seed + index, job=generation.job_id)
        path = Path(name)
        if not path.suffix:
            path = path.with_name(path.name + image.suffix)
        paths.append(path)
    return paths


def finish(ctx: Context, generation: Generation) -> int:
    paths = output_paths(ctx.args.output, generation)
    for path, image in zip(paths, generation.encoded, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    usage = generation.usage
    human = "\n".join(
        [
            *(
                f"wrote {p} ({i.width}x{i.height} {i.format})"
                for p, i in zip(paths, generation.encoded, strict=True)
            ),
            f"seed {generation.seed}, {generation.steps} steps, "
            f"{usage.run_seconds:.2f}s run, {usage.queue_seconds:.2f}s queued, "
            f"job {generation.job_id}",
        ]
    )
    if generation.prompt_truncated:
        ctx.note("note: the prompt was cut to the text encoder's token limit")
    ctx.note_model_notice()
    ctx.emit(
        {
            "job_id": generation.job_id,
            "replica": ctx.replica(generation.job_id),
            "files": [str(p) for p in paths],
            "images": [
                {"path": str(p), "width": i.width, "height": i.height, "format": i.format}
                for p, i in zip(paths, generation.encoded, strict=True)
            ],
            "seed": generation.seed,
            "steps": generation.steps,
            "prompt_truncated": generation.prompt_truncated,
            "usage": usage,
        },
        human,
    )
    return 0


def generate(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client(T2IClient)
    if args.no_stream:
        result = client.generate(args.prompt, on_job=ctx.track, **options(args))
        return finish(ctx, result)
    stream = client.stream_generate(args.prompt, preview_every=args.preview_every, **options(args))
    return finish(ctx, ctx.follow(stream).result)


def edit(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client(T2IClient)
    image = Path(args.image)
    if args.no_stream:
        result = client.edit(
            image, args.prompt, strength=args.strength, on_job=ctx.track, **options(args)
        )
        return finish(ctx, result)
    stream = client.stream_edit(
        image,
        args.prompt,
        strength=args.strength,
        preview_every=args.preview_every,
        **options(args),
    )
    return finish(ctx, ctx.follow(stream).result)


def inpaint(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client(T2IClient)
    image, mask = Path(args.image), Path(args.mask)
    if args.no_stream:
        result = client.inpaint(
            image, mask, args.prompt, strength=args.strength, on_job=ctx.track, **options(args)
        )
        return finish(ctx, result)
    stream = client.stream_inpaint(
        image,
        mask,
        args.prompt,
        strength=args.strength,
        preview_every=args.preview_every,
        **options(args),
    )
    return finish(ctx, ctx.follow(stream).result)


def instruct(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client(T2IClient)
    image = Path(args.image)
    if args.no_stream:
        result = client.instruct(image, args.instruction, on_job=ctx.track, **options(args))
        return finish(ctx, result)
    stream = client.stream_instruct(
        image, args.instruction, preview_every=args.preview_every, **options(args)
    )
    return finish(ctx, ctx.follow(stream).result)
