"""AUTOMATIC1111's web API shapes: /sdapi/v1/txt2img, /sdapi/v1/img2img, /sdapi/v1/samplers, /sdapi/v1/schedulers.

Requests follow A1111's StableDiffusionProcessing fields and defaults (steps 50, cfg_scale 7, sampler_index
"Euler", seed -1 = random, denoising_strength 0.75); width and height default to the bundle's size instead of
512, since a bundle may not take 512. Each of the n_iter iterations is its own job of batch_size images with
seeds seed + k * batch_size + i, as A1111 numbers them, so the batching loop can interleave them with others.

A1111 clients send many fields sdrt has no use for (enable_hr, restore_faces, styles, ...). They are accepted
and ignored, and named in the `X-Sdrt-Ignored-Fields` response header and in `info`'s "ignored_fields", so
nothing is dropped unnoticed. Of `override_settings` sdrt reads CLIP_stop_at_last_layers (A1111's clip skip,
also accepted as a top-level `clip_skip`); its other keys are named as ignored, e.g.
"override_settings.sd_model_checkpoint".
"""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, create_model

from .. import __version__
from ..errors import UserError
from ..runtime.images import inverted_mask
from ..runtime.pipeline import GenerationResult
from ..runtime.request import GenerationRequest
from ..runtime.seeds import MAX_SEED, check_seed_count, resolve_seed
from ..schedulers import REGISTRY
from . import field_names
from .a1111_echo import echoed
from .api_errors import ApiError, error_responses, invalid
from .controlnet_api import AlwaysOnScripts, control_specs
from .controlnet_api import ignored as ignored_scripts
from .features import check_clip_skip, clip_skip_field
from .image_codec import decode_image, png_base64
from .limits import (check_images, check_pixels, check_steps, check_text, check_tokens, check_windows,
                     shown_in_schema)
from .loras import from_prompt
from .model_info import ServedModel, json_number
from .runner import ServerState, Submission
from .sampler_names import SCHEDULER_LABELS, aliases, sampler_and_schedule
from .settings import Limits

IGNORED_HEADER = "X-Sdrt-Ignored-Fields"
SAMPLER_OPTIONS = ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise")
HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%,")  # printable ASCII but % and ,
A1111_STEPS = 50  # A1111's default steps; a server allowing fewer defaults to its maximum
HEADER_NAMES_BYTES = 1024  # names in X-Sdrt-Ignored-Fields before the rest is summarised (info has them all)


SCRIPTS = "sd-webui-controlnet's ControlNet units (docs/controlnet.md); other scripts are ignored."
INIT_IMAGES = "Base64 images (a data-URL prefix is accepted); sdrt uses one."
CLIP_STOP = "CLIP_stop_at_last_layers"
CLIP_SKIP_EXTRA = f"sdrt extra: override_settings.{CLIP_STOP} as a field; 1 when neither is sent. "
OVERRIDES = (f"A1111's per-request settings: sdrt reads {CLIP_STOP} (clip skip); other keys are ignored and "
             "named as override_settings.KEY.")


class OverrideSettings(BaseModel):
    """A1111's override_settings: the one setting sdrt has, clip skip; other keys reported as ignored."""

    model_config = ConfigDict(extra="allow")

    CLIP_stop_at_last_layers: int | None = Field(None, ge=1, description="Clip skip, A1111 numbering.")


class Txt2ImgRequest(BaseModel):
    """A1111's txt2img request; fields sdrt does not use are accepted and reported as ignored."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = Field(A1111_STEPS, ge=1)
    sampler_name: str | None = Field(None, description='A1111 name such as "DPM++ 2M Karras" or "Euler a"; '
                                                       "a schedule suffix wins over `scheduler`.")
    sampler_index: str = Field("Euler", description="A1111's older name for sampler_name, used when "
                                                    "sampler_name is empty.")
    scheduler: str | None = Field(None, description="Automatic, Uniform, Karras, Exponential or Align Your Steps.")
    cfg_scale: float = Field(7.0, ge=0)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1: a random seed.")
    width: int | None = Field(None, ge=1, description="Default: the bundle's default width.")
    height: int | None = Field(None, ge=1, description="Default: the bundle's default height.")
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    eta: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    send_images: bool = True
    clip_skip: int | None = Field(None, ge=1, description=CLIP_SKIP_EXTRA)
    override_settings: OverrideSettings | None = Field(None, description=OVERRIDES)
    alwayson_scripts: AlwaysOnScripts | None = Field(None, description=SCRIPTS)


class Img2ImgRequest(Txt2ImgRequest):
    """A1111's img2img request: one init image; with `mask`, inpainting (white = repaint)."""

    init_images: list[str] = Field(min_length=1, description=INIT_IMAGES)
    mask: str | None = Field(None, description="Base64 mask of the init image's size; white = repaint.")
    denoising_strength: float = Field(0.75, gt=0, le=1)
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1: black = repaint.")
    include_init_images: bool = False


class A1111Response(BaseModel):
    images: list[str] = Field(description="Base64 PNGs, each with its `parameters` text chunk.")
    parameters: dict[str, Any] = Field(description="The request as received.")
    info: str = Field(description="JSON text: seeds, all_seeds, infotexts and the settings used.")


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


def ignored_fields(body: Txt2ImgRequest, sampler: str) -> list[str]:
    """Fields sent that this request does not use: unknown ones, and sampler options the sampler lacks."""
    names = set(body.model_extra or ())
    names |= {k for k in SAMPLER_OPTIONS if getattr(body, k) is not None and k not in REGISTRY[sampler].options}
    if body.override_settings is not None:
        names |= {f"override_settings.{k}" for k in body.override_settings.model_extra or ()}
    return sorted(names | ignored_scripts(body.alwayson_scripts))


def clip_skip_of(body: Txt2ImgRequest) -> tuple[int, str]:
    """(clip skip, the field it came from): override_settings' as A1111 sends it, or the top-level field."""
    setting = body.override_settings.CLIP_stop_at_last_layers if body.override_settings is not None else None
    if setting is not None and body.clip_skip is not None and setting != body.clip_skip:
        raise invalid(f"clip_skip {body.clip_skip} and override_settings.{CLIP_STOP} {setting} disagree: send one "
                      "of them", "clip_skip")
    if setting is not None:
        return setting, f"override_settings.{CLIP_STOP}"
    return (1 if body.clip_skip is None else body.clip_skip), "clip_skip"


def ignored_header(names: list[str]) -> str:
    """The X-Sdrt-Ignored-Fields value. HTTP headers carry printable ASCII only, and a client may send any JSON
    key, so other characters (and % and ,) are percent-encoded as UTF-8; `info` holds the names verbatim.
    Past HEADER_NAMES_BYTES the rest is counted, not listed ("... and 4990 more"; the spaces cannot be part of
    an encoded name): 20,000 names made a header no client could read."""
    shown: list[str] = []
    size = 0
    for name in names:
        encoded = quote(name.encode("utf-8", "surrogatepass"), safe=HEADER_SAFE)
        size += len(encoded) + 2
        if size > HEADER_NAMES_BYTES:
            return ", ".join([*shown, f"... and {len(names) - len(shown)} more"])
        shown.append(encoded)
    return ", ".join(shown)


def to_requests(body: Txt2ImgRequest, state: ServerState) -> tuple[list[GenerationRequest], str, str]:
    """One GenerationRequest per iteration; (requests, sdrt sampler, schedule). Limits checked first."""
    limits, model = state.settings.limits, state.model
    check_steps(limits, "steps", body.steps)
    check_images(limits, "batch_size" if body.n_iter == 1 else "n_iter", body.batch_size * body.n_iter)
    check_iterations(state, body.n_iter)
    check_text(limits, "prompt", body.prompt)  # before its <lora:...> tags are read
    prompt, loras = from_prompt(body.prompt, state.settings.lora_dir)  # <lora:name:scale> tags taken out
    check_tokens(limits, model.count_tokens, "prompt", prompt)
    check_tokens(limits, model.count_tokens, "negative_prompt", body.negative_prompt)
    for field, text in (("prompt", prompt), ("negative_prompt", body.negative_prompt)):
        check_windows(limits, lambda t: model.count_windows(t, True), field, text)
    sampler, schedule = sampler_and_schedule(body.sampler_name or body.sampler_index, body.scheduler,
                                             "sampler_name" if body.sampler_name else "sampler_index", "scheduler")
    options = {k: getattr(body, k) for k in SAMPLER_OPTIONS
               if getattr(body, k) is not None and k in REGISTRY[sampler].options}
    init_image = mask = None
    strength = None
    if isinstance(body, Img2ImgRequest):
        if len(body.init_images) > 1:
            raise invalid(f"init_images holds {len(body.init_images)} images; sdrt uses one per request: send "
                          "one request per image", "init_images")
        init_image = decode_image(body.init_images[0], "init_images.0", limits)
        if body.mask is not None and body.mask != "":
            mask = decode_image(body.mask, "mask", limits)
            if body.inpainting_mask_invert:
                mask = inverted_mask(mask)
        strength = body.denoising_strength
    default_h, default_w = model.default_size
    width = body.width or (init_image.size[0] if init_image is not None else default_w)
    height = body.height or (init_image.size[1] if init_image is not None else default_h)
    check_pixels(limits, "width", width, height)
    clip_skip, source = clip_skip_of(body)
    check_clip_skip(model, source, clip_skip)
    seed = resolve_seed(body.seed)
    check_seeds(seed, body.batch_size * body.n_iter, "seed")
    controls = control_specs(body.alwayson_scripts, limits, (width, height))
    requests = [GenerationRequest(
        prompt=prompt, negative=body.negative_prompt, steps=body.steps, sampler=sampler, schedule=schedule,
        cfg=body.cfg_scale, seed=seed + k * body.batch_size, batch=body.batch_size, width=body.width,
        height=body.height, init_image=init_image, strength=strength, mask=mask, sampler_options=options,
        clip_skip=clip_skip, controls=controls, loras=loras)
        for k in range(body.n_iter)]
    return requests, sampler, schedule


def check_iterations(state: ServerState, n_iter: int) -> None:
    """Each iteration is one queued job, so n_iter past the engine's queue could never be admitted: a 422
    naming the limit, not a 429 whose retry can never succeed."""
    max_queue = getattr(state.engine, "max_queue", None)
    if max_queue is not None and n_iter > max_queue:
        raise invalid(f"n_iter {n_iter} is more iterations than this server's queue holds (--max-queue "
                      f"{max_queue}): send at most {max_queue}, or more images per iteration with batch_size",
                      "n_iter")


def check_seeds(seed: int, images: int, field: str) -> None:
    """A 422 when the last image's seed (seed + images - 1) would pass the largest seed: every seed reported in
    `all_seeds` or an image's `seed` must be one this server accepts back (sdrt.runtime.seeds)."""
    try:
        check_seed_count(seed, images, field)
    except UserError as exc:
        raise invalid(str(exc), field) from None


def response(body: Txt2ImgRequest, results: list[GenerationResult], sampler: str, schedule: str,
             ignored: list[str]) -> dict[str, Any]:
    images = [(pixels, text) for r in results for pixels, text in zip(r.images, r.parameters)]
    seeds = [seed for r in results for seed in r.seeds]
    height, width = images[0][0].shape[:2]
    info = {
        "prompt": body.prompt, "all_prompts": [body.prompt] * len(seeds),
        "negative_prompt": body.negative_prompt, "all_negative_prompts": [body.negative_prompt] * len(seeds),
        "seed": seeds[0], "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(seeds),
        "width": width, "height": height, "sampler_name": REGISTRY[sampler].title,
        "scheduler": next(label for label, s in SCHEDULER_LABELS.items() if s == schedule),
        "cfg_scale": body.cfg_scale, "steps": body.steps, "batch_size": body.batch_size, "n_iter": body.n_iter,
        "clip_skip": clip_skip_of(body)[0],
        "denoising_strength": getattr(body, "denoising_strength", None), "index_of_first_image": 0,
        "infotexts": [text for _, text in images], "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "version": f"sdrt {__version__}", "notes": sorted({n for r in results for n in r.notes}),
        "ignored_fields": ignored,
    }
    parameters = echoed(body.model_dump(), type(body).model_fields)
    if isinstance(body, Img2ImgRequest) and not body.include_init_images:
        parameters["init_images"] = None
        parameters["mask"] = None
    encoded = [png_base64(pixels, text) for pixels, text in images] if body.send_images else []
    return {"images": encoded, "parameters": parameters, "info": json.dumps(info)}


GENERATION_ERRORS = error_responses(413, 422, 429, 500, 503, 504)
OK_HEADERS = {IGNORED_HEADER: {"description": "Request fields sent that sdrt did not use, comma-separated; absent "
                                              "when none.", "schema": {"type": "string"}}}


def limited_fields(limits: Limits, model: ServedModel) -> dict[str, Any]:
    """This server's limits and the bundle's size range, shown in /openapi.json (checked by the server)."""
    images = f"this server makes at most {limits.max_images} images per request (batch_size * n_iter)"
    size = {"minimum": model.min_size, "maximum": model.max_size, "multipleOf": model.size_multiple}
    pixels = f"width * height at most {limits.max_pixels} pixels"
    tokens = (f"At most {limits.max_prompt_chars} characters and {limits.max_prompt_tokens} CLIP tokens on this "
              "server.")
    steps = f"A1111's default {A1111_STEPS}, or this server's maximum {limits.max_steps} if lower."
    overrides = create_model("OverrideSettings", __base__=OverrideSettings, __module__=__name__,
                             CLIP_stop_at_last_layers=(int | None, clip_skip_field(model, None)))
    return {
        "clip_skip": (int | None, clip_skip_field(model, None, CLIP_SKIP_EXTRA)),
        "override_settings": (overrides | None, Field(None, description=OVERRIDES)),
        "alwayson_scripts": (AlwaysOnScripts | None, Field(None, description=SCRIPTS[:-1] + f"; at most "
                             f"{limits.max_controls} enabled ControlNet units per request on this server.")),
        "prompt": (str, Field("", description=tokens)),
        "negative_prompt": (str, Field("", description=tokens)),
        "steps": (int, Field(min(A1111_STEPS, limits.max_steps), ge=1, description=steps,
                             json_schema_extra=shown_in_schema(maximum=limits.max_steps))),
        "batch_size": (int, Field(1, ge=1, description=images,
                                  json_schema_extra=shown_in_schema(maximum=limits.max_images))),
        "n_iter": (int, Field(1, ge=1, description=images,
                              json_schema_extra=shown_in_schema(maximum=limits.max_images))),
        "width": (int | None, Field(None, ge=1, description=f"Default: the bundle's default width; {pixels}.",
                                    json_schema_extra=shown_in_schema(**size))),
        "height": (int | None, Field(None, ge=1, description=f"Default: the bundle's default height; {pixels}.",
                                     json_schema_extra=shown_in_schema(**size))),
    }


def request_models(limits: Limits, model: ServedModel) -> tuple[type[Txt2ImgRequest], type[Img2ImgRequest]]:
    """The request models of one server: A1111's fields, with its limits and its bundle's sizes in the schema."""
    fields = limited_fields(limits, model)
    example = [[example_image(model.min_size)]]  # /docs shows it, and schemathesis starts from it
    return (create_model("Txt2ImgRequest", __base__=Txt2ImgRequest, __module__=__name__, **fields),
            create_model("Img2ImgRequest", __base__=Img2ImgRequest, __module__=__name__, **fields,
                         init_images=(list[str], Field(min_length=1, description=INIT_IMAGES, examples=example))))


def example_image(side: int) -> str:
    """A grey square PNG, base64: the example init image of the document."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (128, 128, 128)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def submit(submission: Submission, fields: dict[str, str],
                 options: dict[str, str] = field_names.A1111) -> None:
    """Submit, naming the request field of the runtime's refusals by their first words (`fields`: first words
    -> field): size refusals name the side first ("height 33 is not a multiple of 8: use 32 or 40"), and a
    client (the playground) shows an error beside its field. The CLI options they name become the route's
    fields (`options`, see field_names)."""
    try:
        await submission.submit()
    except ApiError as error:
        if error.code == "invalid_request" and error.field is None:
            error.field = next((field for start, field in fields.items()
                                if error.message.startswith(start + " ")), None)
        raise field_names.in_fields(error, options) from None


def checked(build: Any, options: dict[str, str]) -> Any:
    """`build()`, its runtime refusals (a GenerationRequest that refuses its fields) as one 422 line."""
    try:
        return build()
    except UserError as exc:
        raise field_names.in_fields(invalid(str(exc)), options) from None


def router(state: ServerState) -> APIRouter:
    api = APIRouter(tags=["AUTOMATIC1111"])
    txt2img_body, img2img_body = request_models(state.settings.limits, state.model)

    async def generate(body: Txt2ImgRequest, http: Request, out: Response) -> dict[str, Any]:
        # Tokenising, decoding the images and encoding the PNGs take a thread: on the event loop they would
        # stop every other request, /healthz included, while they run.
        requests, sampler, schedule = await anyio.to_thread.run_sync(
            checked, lambda: to_requests(body, state), field_names.A1111)
        ignored = ignored_fields(body, sampler)
        if ignored:
            out.headers[IGNORED_HEADER] = ignored_header(ignored)
        submission = Submission(state, requests)
        await submit(submission, {"width": "width", "height": "height"})
        try:
            results = await submission.results(http)
        except ApiError as error:
            raise field_names.in_fields(error, field_names.A1111) from None
        return await anyio.to_thread.run_sync(response, body, results, sampler, schedule, ignored)

    async def txt2img(body: Txt2ImgRequest, http: Request, out: Response) -> dict[str, Any]:
        """Text to image, as AUTOMATIC1111's API."""
        return await generate(body, http, out)

    async def img2img(body: Img2ImgRequest, http: Request, out: Response) -> dict[str, Any]:
        """Image to image, and inpainting with `mask`, as AUTOMATIC1111's API."""
        return await generate(body, http, out)

    for path, endpoint, model in (("/sdapi/v1/txt2img", txt2img, txt2img_body),
                                  ("/sdapi/v1/img2img", img2img, img2img_body)):
        endpoint.__annotations__["body"] = model  # this server's model (the annotation names the base class)
        api.post(path, response_model=A1111Response, responses={
            200: {"description": "The images.", "headers": OK_HEADERS}, **GENERATION_ERRORS})(endpoint)

    @api.get("/sdapi/v1/samplers", response_model=list[SamplerItem])
    def samplers() -> list[dict[str, Any]]:
        """The samplers, by A1111 title; `aliases` holds sdrt's name; `options` the sampler options' defaults."""
        return [{"name": spec.title, "aliases": aliases(name),
                 "options": {k: json_number(o.default) for k, o in spec.options.items()}}
                for name, spec in sorted(REGISTRY.items(), key=lambda item: item[1].title)]

    @api.get("/sdapi/v1/schedulers", response_model=list[SchedulerItem])
    def schedulers() -> list[dict[str, Any]]:
        """The schedulers `scheduler` accepts, A1111's shape; each maps to an sdrt schedule (its alias)."""
        return [{"name": label.lower().replace(" ", "_"), "label": label, "aliases": [ours]}
                for label, ours in SCHEDULER_LABELS.items()]

    return api
