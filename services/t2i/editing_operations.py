"""ImageToImage, InpaintImage and EditImage (unary and streaming): the t2i operations that
start from an image.

Each checks the request on the event loop and decodes the image (and mask) on the CPU pool,
where every problem is reported together with those parsing found; the device thread only
denoises, and the job is queued, reports progress and previews, and cancels at the next step
like any t2i job. A model without the pipeline answers before anything is decoded
(UNIMPLEMENTED for image-to-image, FAILED_PRECONDITION for inpainting and edits):
GetModelInfo's limits say which operations it supports.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from PIL import Image

from mmserve.common.v1 import media_pb2
from mmserve.t2i.v1 import t2i_pb2
from services.runtime import errors
from services.runtime.operations import CallFacts
from services.t2i.inpainting import checked_mask, sized_mask
from services.t2i.operations import (
    Delivery,
    GenerationJob,
    _Generation,
    _generation_request,
    _preview_every,
    _resize,
)
from services.t2i.validation import GenerationRequest, fit_size

# Inpainting paints the masked area from noise unless told otherwise (diffusers' default too).
DEFAULT_INPAINT_STRENGTH = 1.0


@dataclass(frozen=True)
class InputImages:
    """A request as parsed: its images are decoded (and the plan, which depends on their size,
    made) on the CPU pool. `problems` are the violations parsing found, reported together with
    the ones only the decoded images reveal."""

    image: media_pb2.Image
    mask: media_pb2.Image | None
    request: GenerationRequest
    delivery: Delivery
    preview_every: int
    problems: tuple[errors.FieldViolation, ...]


class _FromImages(_Generation[InputImages]):
    """Decoding the inputs of an image operation, with their violations gathered."""

    def _parsed(
        self,
        message: (
            t2i_pb2.ImageToImageRequest | t2i_pb2.InpaintImageRequest | t2i_pb2.EditImageRequest
        ),
        call: CallFacts,
        image_fields: tuple[str, ...],
        strength: float | None = None,
    ) -> InputImages:
        problems = errors.Violations()
        preview = message.preview if call.streaming else None
        delivery = self.delivery(message.params, preview, problems)
        for name in image_fields:
            if not message.HasField(name):  # type: ignore[arg-type]
                problems.add(name, "required")
        if any(v.field in image_fields for v in problems.items):
            problems.raise_if_any()
        mask = getattr(message, "mask", None) if "mask" in image_fields else None
        request = _generation_request(message.params, strength=strength)
        return InputImages(
            message.image,
            mask,
            request,
            delivery,
            _preview_every(preview),
            tuple(problems.items),
        )

    def _decoded(
        self, parsed: InputImages
    ) -> tuple[errors.Violations, Image.Image | None, Image.Image | None]:
        """The problems so far (parsing's, then decoding's), the image and the mask (None where
        absent or undecodable, with the violation)."""
        problems = errors.Violations()
        problems.items.extend(parsed.problems)
        decoded: list[Image.Image | None] = []
        for message, name in ((parsed.image, "image"), (parsed.mask, "mask")):
            if message is None:
                decoded.append(None)
                continue
            try:
                # No aspect-ratio cap: inputs are resized to the output size.
                decoded.append(self.runtime.load_image(message, name, max_aspect_ratio=None))
            except errors.InvalidArgument as exc:
                problems.take(exc)
                decoded.append(None)
        return problems, decoded[0], decoded[1]

    def _family(self) -> str:
        return self.engine.info().family


class ImageToImage(_FromImages):
    """ImageToImage and StreamImageToImage: the input decoded and resized on the CPU pool."""

    kind = "image_to_image"
    response_cls = t2i_pb2.ImageToImageResponse
    stream_response_cls = t2i_pb2.StreamImageToImageResponse

    def parse(self, message: t2i_pb2.ImageToImageRequest, call: CallFacts) -> InputImages:
        if not self.engine.limits.supports_image_to_image:
            # Before anything else: the answer depends on the model, not on the request.
            raise errors.Unimplemented(
                f"the loaded {self._family()} pipeline has no image-to-image variant"
            )
        strength = message.strength if message.HasField("strength") else None
        return self._parsed(message, call, ("image",), strength)

    def prepare(self, parsed: InputImages) -> GenerationJob:
        problems, image, _ = self._decoded(parsed)
        if image is None:
            problems.raise_if_any()
            raise AssertionError("an undecodable input always has a violation")
        sized = replace(parsed.request, input_size=image.size)
        job = self.job(sized, parsed.delivery, parsed.preview_every, problems)
        resized = _resize(image, job.plan.width, job.plan.height)
        return replace(job, plan=replace(job.plan, image=resized))


class InpaintImage(_FromImages):
    """InpaintImage and StreamInpaintImage: image and mask decoded and resized on the CPU pool."""

    kind = "inpainting"
    response_cls = t2i_pb2.InpaintImageResponse
    stream_response_cls = t2i_pb2.StreamInpaintImageResponse

    def parse(self, message: t2i_pb2.InpaintImageRequest, call: CallFacts) -> InputImages:
        if not self.engine.limits.supports_inpainting:
            # Before anything else: the answer depends on the model, not on the request.
            raise errors.FailedPrecondition(
                f"the loaded {self._family()} pipeline has no inpainting variant "
                "(GetModelInfo: limits.supports_inpainting)"
            )
        strength = message.strength if message.HasField("strength") else DEFAULT_INPAINT_STRENGTH
        return self._parsed(message, call, ("image", "mask"), strength)

    def prepare(self, parsed: InputImages) -> GenerationJob:
        problems, image, mask = self._decoded(parsed)
        grey = checked_mask(mask, image.size, problems) if image and mask else None
        if grey is not None:
            # Checked at the sent size, so this problem is reported with the request's others.
            sized_mask(grey, *grey.size, problems)
        if image is None or grey is None:
            problems.raise_if_any()
            raise AssertionError("an undecodable input always has a violation")
        sized = replace(parsed.request, input_size=image.size)
        job = self.job(sized, parsed.delivery, parsed.preview_every, problems)
        width, height = job.plan.width, job.plan.height
        mask_problems = errors.Violations()
        final_mask = sized_mask(grey, width, height, mask_problems)
        mask_problems.raise_if_any()  # a thin stroke can fade below mid-grey when shrunk
        plan = replace(job.plan, image=_resize(image, width, height), mask=final_mask)
        return replace(job, plan=plan)


class EditImage(_FromImages):
    """EditImage and StreamEditImage: the image decoded on the CPU pool and given to the edit
    pipeline as sent (it reads it at its own conditioning resolution)."""

    kind = "image_editing"
    response_cls = t2i_pb2.EditImageResponse
    stream_response_cls = t2i_pb2.StreamEditImageResponse

    def parse(self, message: t2i_pb2.EditImageRequest, call: CallFacts) -> InputImages:
        if not self.engine.limits.supports_image_editing:
            raise errors.FailedPrecondition(
                f"the loaded {self._family()} model has no instruction-edit pipeline (serve an "
                "edit checkpoint such as Qwen/Qwen-Image-Edit; GetModelInfo: "
                "limits.supports_image_editing)"
            )
        return self._parsed(message, call, ("image",))

    def prepare(self, parsed: InputImages) -> GenerationJob:
        problems, image, _ = self._decoded(parsed)
        if image is None:
            problems.raise_if_any()
            raise AssertionError("an undecodable input always has a violation")
        # The output size defaults to the input's, fitted to the limits like image-to-image.
        width, height = fit_size(image.size, self.engine.limits)
        request = parsed.request
        request = replace(
            request,
            width=width if request.width is None else request.width,
            height=height if request.height is None else request.height,
        )
        job = self.job(request, parsed.delivery, parsed.preview_every, problems)
        return replace(job, plan=replace(job.plan, image=image, edit=True))
