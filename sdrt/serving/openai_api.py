"""OpenAI's Images API shape: POST /v1/images/generations, with sdrt's own settings as extra fields, its
Server-Sent-Events variant (`"stream": true`), and GET /v1/models describing the bundle.

The stream sends `event: progress` with {"step", "total", "images"} after every sampling step, then one
`event: done` whose data is the same JSON the non-streaming call returns, or one `event: error` whose data
is the error body plus "status". Errors found before the job starts (limits, a full queue) are ordinary
HTTP errors, not streams.
"""

from __future__ import annotations

import json
import re
import time
from typing import Annotated, Any, AsyncIterator, Literal

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from ..runtime.outpaint import FILLS
from ..runtime.pipeline import GenerationResult
from ..runtime.request import GenerationRequest
from ..runtime.seeds import MAX_SEED, resolve_seed
from . import field_names
from .a1111 import GENERATION_ERRORS, IGNORED_HEADER, OK_HEADERS, check_seeds, checked, ignored_header, submit
from .api_errors import ApiError, invalid
from .features import CLIP_SKIP_HELP, OUTPAINT_REFUSALS, check_clip_skip, check_outpaint, clip_skip_field
from .image_codec import decode_image, png_base64
from .jobs import DoneEvent
from .limits import check_images, check_pixels, check_steps, check_tokens, check_windows, shown_in_schema
from .loras import LoraRef, resolve as resolve_loras
from .model_info import ServedModel, sampler_descriptions, schedules
from .runner import ServerState, Submission
from .sampler_names import resolve_sampler, resolve_schedule
from .settings import Limits

SIZE = re.compile(r"^\s*([0-9]{1,6})\s*[xX]\s*([0-9]{1,6})\s*$")  # more digits than any size: refused as not a size
DEFAULT_STEPS = 20  # a server allowing fewer defaults to its maximum
SIZE_PATTERN = r"^\s*([0-9]{1,6}\s*[xX]\s*[0-9]{1,6}|[aA][uU][tT][oO])\s*$"
Margin = Annotated[int, Field(ge=0)]


class ImageGenerationRequest(BaseModel):
    """OpenAI's request (prompt, n, size, response_format) plus sdrt's settings; other OpenAI fields (model,
    quality, style, user, ...) are accepted, ignored and named in the X-Sdrt-Ignored-Fields header."""

    model_config = ConfigDict(extra="allow")

    prompt: str
    n: int = Field(1, ge=1)
    size: str | None = Field(None, description='"WIDTHxHEIGHT", e.g. "512x512"; null or "auto": the bundle\'s '
                                               "default size.")
    response_format: str = Field("b64_json", description="b64_json only: sdrt keeps no files to link to.")
    stream: bool = Field(False, description="Server-Sent Events: progress per step, then done (or error).")
    negative_prompt: str | None = None
    steps: int = Field(DEFAULT_STEPS, ge=1)
    sampler: str = Field("euler", description="sdrt name (GET /v1/models) or A1111 title; a Karras or "
                                              "Exponential suffix sets the schedule.")
    schedule: str | None = Field(None, description="normal, karras, exponential or ays (default normal).")
    sampler_options: dict[str, float] = Field(default_factory=dict, description='e.g. {"eta": 0.5}')
    cfg: float = Field(7.5, ge=0)
    guidance_rescale: float = Field(0.0, ge=0, le=1)
    seed: int | None = Field(None, ge=-1, le=MAX_SEED, description="null or -1: random; image i uses seed + i.")
    temperature: float = Field(1.0, gt=0)
    temperature_method: Literal["tsr", "cns"] = "tsr"
    init_image: str | None = Field(None, description="Base64 PNG or JPEG to start from (image to image); `size` "
                                                     "defaults to its size.")
    mask: str | None = Field(None, description="Base64 mask of the init image's size; white = repaint "
                                               "(inpainting).")
    strength: float | None = Field(None, gt=0, le=1, description="How far from the init image: 1 repaints "
                                                                 "all. Default 0.8, inpainting 1.")
    clip_skip: int = Field(1, ge=1, description=CLIP_SKIP_HELP)
    prompt_weighting: bool = Field(True, description="Read A1111's emphasis syntax in the prompts: (word:1.2), "
                                                     "[word], BREAK; false: the text is taken literally.")
    outpaint: list[Margin] | None = Field(
        None, min_length=4, max_length=4, description="[left, right, top, bottom] pixels to add around init_image (each rounded up to the "
                          "size multiple); the canvas sets the size, so no size or mask.")
    outpaint_fill: Literal[FILLS] = Field("edge", description="The new area before sampling: the border pixels "
                                                              "repeated, random colours, or the border blurred.")
    loras: list[LoraRef] = Field(default_factory=list, description="LoRA adapters of the server's --lora-dir, by "
                                                                   "name, each with its scale.")


class ImageData(BaseModel):
    b64_json: str = Field(description="Base64 PNG with its `parameters` text chunk.")
    seed: int = Field(description="sdrt extra: the image's seed.")
    parameters: str = Field(description="sdrt extra: the PNG's `parameters` text (A1111's format).")


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class SamplerOptionInfo(BaseModel):
    default: float | str
    min: float | str
    max: float | str
    range: str
    help: str


class SamplerInfo(BaseModel):
    name: str
    title: str
    stochastic: bool
    options: dict[str, SamplerOptionInfo]


class LimitsInfo(BaseModel):
    max_steps: int
    max_images: int
    max_pixels: int
    max_prompt_tokens: int
    max_prompt_chars: int
    max_input_pixels: int
    max_controls: int
    request_timeout: float
    max_body_bytes: int = Field(description="Largest request body; past it 413.")
    header_timeout: float = Field(description="Seconds a client has to send a request's headers; then 408.")
    body_timeout: float = Field(description="Seconds a client has to send a request's body; then 408.")
    max_connections: int = Field(description="Open connections; past it a new one gets 503.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sdrt"
    family: str
    min_size: int
    max_size: int
    size_multiple: int
    default_size: dict[str, int]
    samplers: list[SamplerInfo]
    schedules: list[str]
    limits: LimitsInfo
    precision: str = Field(description="what computes the images: fp32, fp16, bf16 (auto on a CPU with native bf16, "
                                       "after the quality gate) or int8")
    backend: str = Field(description="the engine backend in use, e.g. ort-cpu, openvino, trt")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def request_model(limits: Limits, model: ServedModel) -> type[ImageGenerationRequest]:
    """This server's request model: its limits and its bundle's sizes shown in /openapi.json."""
    tokens = (f"At most {limits.max_prompt_chars} characters and {limits.max_prompt_tokens} CLIP tokens on this "
              "server.")
    size = (f'"WIDTHxHEIGHT", e.g. "{model.default_size[1]}x{model.default_size[0]}"; null or "auto": the '
            f"bundle's default size. Each side {model.min_size}..{model.max_size}, a multiple of "
            f"{model.size_multiple}; width * height at most {limits.max_pixels} pixels on this server.")
    return create_model(
        "ImageGenerationRequest", __base__=ImageGenerationRequest, __module__=__name__,
        prompt=(str, Field(description=tokens)),
        negative_prompt=(str | None, Field(None, description=tokens)),
        n=(int, Field(1, ge=1, json_schema_extra=shown_in_schema(maximum=limits.max_images))),
        steps=(int, Field(min(DEFAULT_STEPS, limits.max_steps), ge=1,
                          description=f"Default {DEFAULT_STEPS}, or this server's maximum {limits.max_steps} if lower.",
                          json_schema_extra=shown_in_schema(maximum=limits.max_steps))),
        size=(str | None, Field(None, description=size, json_schema_extra=shown_in_schema(pattern=SIZE_PATTERN))),
        clip_skip=(int, clip_skip_field(model, 1)))


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size.strip().lower() == "auto":
        return None, None
    match = SIZE.match(size)
    if not match:
        raise invalid(f"size {size!r} is not WIDTHxHEIGHT: write e.g. \"512x512\"", "size")
    return int(match.group(1)), int(match.group(2))


def to_request(body: ImageGenerationRequest, state: ServerState) -> GenerationRequest:
    limits, model = state.settings.limits, state.model
    if body.response_format != "b64_json":
        raise invalid(f"response_format {body.response_format!r} is not supported: use \"b64_json\" (sdrt keeps "
                      "no files to link to)", "response_format")
    check_steps(limits, "steps", body.steps)
    check_images(limits, "n", body.n)
    check_tokens(limits, model.count_tokens, "prompt", body.prompt)
    check_tokens(limits, model.count_tokens, "negative_prompt", body.negative_prompt)
    for field, text in (("prompt", body.prompt), ("negative_prompt", body.negative_prompt)):
        check_windows(limits, lambda t: model.count_windows(t, body.prompt_weighting), field, text)
    width, height = parse_size(body.size)
    # "" is refused as an empty image (as A1111's init_images), never read as "no image": that would silently
    # turn an img2img request into txt2img, or an inpaint into img2img
    init_image = decode_image(body.init_image, "init_image", limits) if body.init_image is not None else None
    mask = decode_image(body.mask, "mask", limits) if body.mask is not None else None
    default_w, default_h = init_image.size if init_image is not None else model.default_size[::-1]
    check_pixels(limits, "size", width or default_w, height or default_h)
    if body.outpaint is not None:
        check_outpaint(limits, model, body.outpaint, init_image, mask is not None,
                       "size" if width is not None else None)
    check_clip_skip(model, "clip_skip", body.clip_skip)
    seed = resolve_seed(body.seed)
    check_seeds(seed, body.n, "seed")
    sampler, from_suffix = resolve_sampler(body.sampler, "sampler")
    schedule = from_suffix or resolve_schedule(body.schedule, "schedule")
    return GenerationRequest(
        prompt=body.prompt, negative=body.negative_prompt, steps=body.steps, sampler=sampler, schedule=schedule,
        sampler_options=dict(body.sampler_options), cfg=body.cfg, guidance_rescale=body.guidance_rescale,
        temperature=body.temperature, temperature_method=body.temperature_method,
        seed=seed, batch=body.n, width=width, height=height, init_image=init_image, mask=mask,
        strength=body.strength, clip_skip=body.clip_skip, prompt_weighting=body.prompt_weighting,
        outpaint=tuple(body.outpaint) if body.outpaint is not None else None, outpaint_fill=body.outpaint_fill,
        loras=resolve_loras(((r.name, r.scale) for r in body.loras), state.settings.lora_dir, "loras"))


def images_response(result: GenerationResult) -> dict[str, Any]:
    return {"created": int(time.time()),
            "data": [{"b64_json": png_base64(pixels, text), "seed": seed, "parameters": text}
                     for pixels, text, seed in zip(result.images, result.parameters, result.seeds)]}


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def stream_events(submission: Submission, http: Request) -> AsyncIterator[str]:
    try:
        async for event in submission.events(http):
            if isinstance(event, DoneEvent):
                yield sse("done", await anyio.to_thread.run_sync(images_response, event.result))
            else:
                yield sse("progress", {"step": event.step, "total": event.total, "images": event.images})
    except ApiError as error:
        if error.status != 499:  # nobody is listening to a vanished client
            field_names.in_fields(error, field_names.OPENAI)
            yield sse("error", {**error.body(), "status": error.status})
    finally:
        submission.cancel()


def router(state: ServerState) -> APIRouter:
    api = APIRouter(tags=["OpenAI"])
    body_model = request_model(state.settings.limits, state.model)

    async def generations(body: ImageGenerationRequest, http: Request, out: Response) -> Any:
        """Generate images (OpenAI's Images API), optionally streaming progress as Server-Sent Events."""
        # Tokenising, decoding the images and encoding the PNGs take a thread (see a1111.router).
        request = await anyio.to_thread.run_sync(checked, lambda: to_request(body, state), field_names.OPENAI)
        ignored = sorted(body.model_extra or ())
        headers = {IGNORED_HEADER: ignored_header(ignored)} if ignored else {}
        submission = Submission(state, [request])
        await submit(submission, {"width": "size", "height": "size", **OUTPAINT_REFUSALS}, field_names.OPENAI)
        if body.stream:
            return StreamingResponse(stream_events(submission, http), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})
        out.headers.update(headers)
        try:
            results = await submission.results(http)
        except ApiError as error:
            raise field_names.in_fields(error, field_names.OPENAI) from None
        return await anyio.to_thread.run_sync(images_response, results[0])

    generations.__annotations__["body"] = body_model  # this server's model (the annotation names the base class)
    api.post("/v1/images/generations", response_model=ImagesResponse, responses={
        **GENERATION_ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                                   "headers": OK_HEADERS,
                                   "description": "JSON, or with stream=true Server-Sent Events: progress, then "
                                                  "done or error."}})(generations)

    @api.get("/v1/models", response_model=ModelList)
    def models() -> dict[str, Any]:
        """The bundle being served: family, sizes, samplers with their options, schedules and the limits."""
        model, limits = state.model, state.settings.limits
        card = {
            "id": model.name, "created": int(state.started), "family": model.family,
            "min_size": model.min_size, "max_size": model.max_size, "size_multiple": model.size_multiple,
            "default_size": {"width": model.default_size[1], "height": model.default_size[0]},
            "samplers": sampler_descriptions(), "schedules": schedules(),
            "limits": {**limits.__dict__, "request_timeout": state.settings.request_timeout,
                       "max_body_bytes": state.max_body_bytes, "header_timeout": state.settings.header_timeout,
                       "body_timeout": state.settings.body_timeout,
                       "max_connections": state.settings.max_connections},
            **model.compute(),
        }
        return {"object": "list", "data": [card]}

    return api
