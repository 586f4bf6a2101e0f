"""`sdrt serve`: an HTTP server for one bundle, AUTOMATIC1111's and OpenAI's API shapes, on FastAPI + uvicorn.

FastAPI, uvicorn and prometheus-client come with the `serve` extra and are imported inside the command only.
"""

from __future__ import annotations

import math
import socket  # noqa: F401  (a type hint)
from pathlib import Path

import click

from ..serving.ray_deploy import RayScale, ReplicaConfig
from ..serving.settings import Limits, ServeSettings
from .options import engine_options

DEFAULT_LIMITS = Limits()
DEFAULT_SETTINGS = ServeSettings()


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 exposes the server to the network (see docs/serving.md).")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free port, printed at start).")
@engine_options
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1),
              help="Most UNet rows the batching loop stacks into one call.")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(min=0),
              help="Most jobs waiting; past it requests get 429 with Retry-After.")
@click.option("--api-key-file", default=None, type=click.Path(path_type=Path),
              help="File with one API key per line; every route but /healthz then needs 'Authorization: Bearer KEY'.")
@click.option("--request-timeout", default=300.0, show_default=True, type=float,
              help="Seconds a request may take; then its job is cancelled and it gets 504.")
@click.option("--max-steps", default=DEFAULT_LIMITS.max_steps, show_default=True, type=click.IntRange(min=1),
              help="Most sampling steps per request.")
@click.option("--max-images", default=DEFAULT_LIMITS.max_images, show_default=True, type=click.IntRange(min=1),
              help="Most images per request (A1111 batch_size * n_iter, OpenAI n).")
@click.option("--max-pixels", default=DEFAULT_LIMITS.max_pixels, show_default=True, type=click.IntRange(min=1),
              help="Most pixels (width * height) per image.")
@click.option("--max-prompt-tokens", default=DEFAULT_LIMITS.max_prompt_tokens, show_default=True,
              type=click.IntRange(min=1), help="Most CLIP tokens in a prompt or negative prompt.")
@click.option("--max-controls", default=DEFAULT_LIMITS.max_controls, show_default=True, type=click.IntRange(min=0),
              help="Most ControlNet units per request (A1111 alwayson_scripts.controlnet.args).")
@click.option("--max-prompt-chars", default=DEFAULT_LIMITS.max_prompt_chars, show_default=True,
              type=click.IntRange(min=1), help="Most characters in a prompt or negative prompt (checked before "
                                               "tokenising).")
@click.option("--max-body-bytes", default=None, type=click.IntRange(min=1024),
              help="Largest request body (413 past it). Default: room for 5 images at the bundle's largest size "
                   "(29 MB for a 1024-pixel bundle).")
@click.option("--header-timeout", default=DEFAULT_SETTINGS.header_timeout, show_default=True, type=float,
              help="Seconds a client has to send a request's headers (and an idle connection stays open).")
@click.option("--body-timeout", default=DEFAULT_SETTINGS.body_timeout, show_default=True, type=float,
              help="Seconds a client has to send a request's body once its headers are in.")
@click.option("--max-connections", default=DEFAULT_SETTINGS.max_connections, show_default=True,
              type=click.IntRange(min=1), help="Open connections; past it a new one is answered 503 and closed.")
@click.option("--lora-dir", default=None, type=click.Path(path_type=Path),
              help="Folder of LoRA .safetensors files that requests may name (docs/lora.md); none by default.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="uvicorn's log level.")
@click.option("--ray", "use_ray", is_flag=True,
              help="Serve on Ray Serve: replicas each with their own engines and batching loop, behind Ray's "
                   "HTTP proxy on --host/--port (docs/serving.md).")
@click.option("--replicas", default=None, type=click.IntRange(min=1),
              help="With --ray: number of replicas (default 1).")
@click.option("--autoscale", default=None, metavar="MIN,MAX",
              help="With --ray: let Ray Serve scale between MIN and MAX replicas with the load.")
@click.option("--cpus-per-replica", default=None, type=click.FloatRange(min=0),
              help="With --ray: CPUs Ray reserves per replica (default 1); --threads 0 then means this many.")
@click.option("--gpus-per-replica", default=None, type=click.FloatRange(min=0),
              help="With --ray: GPUs per replica (default 1 on GPU backends and on auto with a GPU, 0 on CPU; 0.5 "
                   "packs two replicas on a GPU).")
@click.option("--ray-address", default=None,
              help="With --ray: attach to this Ray cluster (auto: the one this node belongs to, or the head's "
                   "HOST:6379) instead of starting a local one.")
def serve(bundle: Path, host: str, port: int, backend: str, engines_dir: Path | None, precision: str | None,
          threads: int, spin: bool | None, max_batch: int, max_queue: int, api_key_file: Path | None,
          request_timeout: float, max_steps: int, max_images: int, max_pixels: int, max_prompt_tokens: int,
          max_controls: int, max_prompt_chars: int, max_body_bytes: int | None, header_timeout: float,
          body_timeout: float, max_connections: int, lora_dir: Path | None, log_level: str, use_ray: bool,
          replicas: int | None, autoscale: str | None,
          cpus_per_replica: float | None, gpus_per_replica: float | None, ray_address: str | None) -> None:
    """Serve BUNDLE over HTTP: A1111's /sdapi/v1/txt2img and img2img, OpenAI's /v1/images/generations (with
    Server-Sent-Events progress), /v1/models, /healthz, /readyz and /metrics.

    SIGTERM drains: new requests get 503, requests in flight finish, then the process exits 0. With --ray the
    same server runs in Ray Serve replicas.
    """
    from ..errors import UserError
    from ..serving.auth import read_api_keys

    ray_options = (replicas, autoscale, cpus_per_replica, gpus_per_replica, ray_address)
    if not use_ray and any(option is not None for option in ray_options):
        raise UserError("--replicas, --autoscale, --gpus-per-replica, --cpus-per-replica and --ray-address need "
                        "--ray: add --ray to serve on Ray Serve")
    for name, value in (("--request-timeout", request_timeout), ("--header-timeout", header_timeout),
                        ("--body-timeout", body_timeout)):
        check_seconds(name, value)
    keys = read_api_keys(api_key_file) if api_key_file is not None else ()
    settings = ServeSettings(
        limits=Limits(max_steps=max_steps, max_images=max_images, max_pixels=max_pixels,
                      max_prompt_tokens=max_prompt_tokens, max_controls=max_controls,
                      max_prompt_chars=max_prompt_chars),
        request_timeout=request_timeout, api_keys=keys, lora_dir=_lora_dir(lora_dir), max_body_bytes=max_body_bytes,
        header_timeout=header_timeout, body_timeout=body_timeout, max_connections=max_connections)
    if use_ray:
        scale = ray_scale(replicas, autoscale, cpus_per_replica, gpus_per_replica, backend)
        config = ReplicaConfig(bundle=str(bundle), settings=settings, backend=backend,
                               engines_dir=str(engines_dir) if engines_dir else None, precision=precision,
                               threads=threads or max(1, int(scale.cpus)), spin=spin, max_batch=max_batch,
                               max_queue=max_queue)
        run_on_ray(config, scale, host, port, ray_address)
        return
    try:
        import fastapi, prometheus_client, uvicorn  # noqa: F401  (the serve extra)
        from ..serving.server import bind
    except ImportError as exc:
        raise UserError(f"sdrt serve needs the serve extra ({exc.name} is missing): pip install 'sdrt[serve]'") from None

    sock = bind(host, port)  # a taken port fails before the bundle loads
    try:
        run_server(sock, bundle, settings, backend, engines_dir, precision, threads, spin, max_batch, max_queue,
                   log_level)
    finally:
        sock.close()
    click.echo("sdrt serve: stopped", err=True)


MAX_SECONDS = 7 * 24 * 3600  # a week: past it a timeout is a typo (and asyncio's timers overflow near 2**31)


def check_seconds(name: str, value: float) -> None:
    """A timeout option: a finite number of seconds above 0 (nan and inf pass click's float type)."""
    from ..errors import UserError

    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise UserError(f"{name} {value:g} is not a number of seconds above 0 and at most {MAX_SECONDS} (a week): "
                        f"give e.g. {name} 300")


def ray_scale(replicas: int | None, autoscale: str | None, cpus: float | None, gpus: float | None,
              backend: str) -> RayScale:
    """The --ray sizing options, checked; GPU backends get a GPU per replica unless told otherwise."""
    from ..errors import UserError
    from ..serving.ray_deploy import parse_autoscale

    if replicas is not None and autoscale is not None:
        raise UserError("--replicas and --autoscale exclude each other: give a fixed number of replicas or a "
                        "MIN,MAX range")
    return RayScale(replicas=replicas or 1, autoscale=parse_autoscale(autoscale) if autoscale else None,
                    cpus=1.0 if cpus is None else cpus,
                    gpus=(1.0 if _wants_gpu(backend) else 0.0) if gpus is None else gpus)


def _wants_gpu(backend: str) -> bool:
    """GPU backends, and auto where this node has an NVIDIA GPU (auto runs on CPU elsewhere)."""
    if backend in ("ort-cpu", "openvino"):
        return False
    if backend == "auto":
        from ..backends.gpu_detect import nvidia_gpu_present

        return nvidia_gpu_present()
    return True


def run_on_ray(config: ReplicaConfig, scale: RayScale, host: str, port: int, address: str | None) -> None:
    """`sdrt serve --ray`: check what can be checked here (the extra, the bundle, a local port), then hand
    over to Ray Serve until SIGTERM or Ctrl-C."""
    from ..errors import UserError
    from ..manifest import Manifest

    try:
        import fastapi, prometheus_client, ray, uvicorn  # noqa: F401  (the serve extra)
        from ray import serve as _  # noqa: F401
    except ImportError as exc:
        raise UserError(f"sdrt serve --ray needs Ray Serve ({exc.name} is missing): pip install 'sdrt[serve]'") \
            from None
    from ..serving.ray_deploy import serve_until_signal
    from ..serving.server import bind

    Manifest.load(config.bundle)  # the replicas open the same path: a wrong one fails here, in one line
    if address is None:  # Ray's proxy binds later, in another process: a taken port fails here first
        if port == 0:
            with bind(host, 0) as probe:
                port = probe.getsockname()[1]
        else:
            bind(host, port).close()
    serve_until_signal(config, scale, host, port, address, lambda line: click.echo(line, err=True))
    click.echo("sdrt serve: stopped", err=True)


def run_server(sock: "socket.socket", bundle: Path, settings: ServeSettings, backend: str,
               engines_dir: Path | None, precision: str | None, threads: int, spin: bool | None, max_batch: int,
               max_queue: int, log_level: str) -> None:
    """Load the bundle, start the batching engine, serve until SIGTERM, then drain and close the engine.
    After a sticky CUDA error the server stops at once and exits with device_lost.EXIT_CODE (module doc of
    sdrt.serving.batcher), so an orchestrator restarts the process."""
    from ..backends.device_lost import EXIT_CODE
    from ..runtime import Pipeline
    from ..runtime.cpu_policy import spin_for_this_machine
    from ..serving.app import create_app
    from ..serving.batcher import BatchingEngine
    from ..serving.metrics import ServeMetrics
    from ..serving.model_info import ServedModel
    from ..serving.server import make_server, stop_on_device_lost

    spin_choice = spin_for_this_machine(spin, threads)
    pipe = Pipeline.load(str(bundle), backend=backend, precision=precision, threads=threads,
                         engines_dir=str(engines_dir) if engines_dir else None, spin=spin_choice.spin)
    metrics = ServeMetrics()
    engine = BatchingEngine(pipe, max_batch=max_batch, max_queue=max_queue, observer=metrics).start()
    try:
        app = create_app(engine, settings, ServedModel.from_pipeline(pipe), metrics)
        server = make_server(app, app.state.sdrt.start_draining, graceful_timeout=settings.request_timeout + 5,
                             log_level=log_level, settings=settings)
        stop_on_device_lost(engine, server)
        host, port = sock.getsockname()[:2]
        click.echo(f"sdrt serve: {bundle} on http://{host}:{port} ({pipe.backend_choice}; {spin_choice})"
                   f"{' with API keys' if settings.api_keys else ''}", err=True)
        server.run(sockets=[sock])
        engine.drain(timeout=settings.request_timeout)
    finally:
        engine.close()
        try:
            pipe.close()
        except Exception:  # noqa: BLE001 - after a sticky CUDA error freeing fails too; the exit frees it all
            if engine.device_lost is None:
                raise
    if engine.device_lost is not None:
        click.echo(f"sdrt serve: {engine.device_lost} (exit code {EXIT_CODE})", err=True)
        raise click.exceptions.Exit(EXIT_CODE)


def _lora_dir(path: Path | None) -> str | None:
    from ..errors import UserError

    if path is None:
        return None
    if not path.is_dir():
        raise UserError(f"--lora-dir {path} is not a folder: pass the folder that holds the LoRA .safetensors files")
    return str(path.resolve())
