"""`sdrt serve --ray`: the same FastAPI app and batching loop in Ray Serve replicas, behind Ray's HTTP proxy.

Each replica is one Ray actor holding one Pipeline (the bundle's engines, on its GPU if it has one), one
BatchingEngine and the app of `create_app`, mounted with `@serve.ingress`; Ray's proxy spreads requests over
the replicas, and each replica batches what it receives at step level, as `sdrt serve` does in one process.
Ray scales out (replicas, machines, autoscaling) and sdrt batches: neither re-implements the other.

Ray is imported only inside the functions that need it, so this module loads without the `ray` package
(tests/test_torch_free.py imports every serving module) and `sdrt serve` without `--ray` never pulls it in.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UserError
from .settings import ServeSettings

APP_NAME = "sdrt"  # the Ray Serve application (and deployment) name
REPLICA_HEADER = "X-Sdrt-Replica"  # every response under Ray names the replica that served it
log = logging.getLogger("sdrt.serve")


@dataclass(frozen=True)
class ReplicaConfig:
    """What each replica needs to open the bundle and serve it; pickled by Ray to every replica.

    `bundle` must be readable at this path on every node that runs a replica."""

    bundle: str
    settings: ServeSettings = field(default_factory=ServeSettings)
    backend: str = "ort-cpu"
    engines_dir: str | None = None
    precision: str | None = None
    threads: int = 0
    spin: bool | None = None
    max_batch: int = 8
    max_queue: int = 64


@dataclass(frozen=True)
class RayScale:
    """How many replicas, and what Ray reserves for each. `autoscale` (min, max) replaces `replicas`."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    cpus: float = 1.0
    gpus: float = 0.0

    def deployment_options(self, max_batch: int, max_queue: int, request_timeout: float) -> dict[str, Any]:
        """Ray Serve deployment options.

        A replica takes up to max_batch + max_queue requests at once, so its own queue (429 past
        --max-queue) stays the admission limit and its batching loop can fill whole batches; Ray's proxy
        holds the rest. Autoscaling aims at half a full batch per replica (one image with CFG is 2 rows):
        more replicas only when batches are already well filled. Shutdown waits for requests in flight
        for as long as a request may take."""
        options: dict[str, Any] = {
            "name": APP_NAME,
            "ray_actor_options": {"num_cpus": self.cpus, "num_gpus": self.gpus},
            "max_ongoing_requests": max_batch + max_queue,
            "graceful_shutdown_timeout_s": request_timeout + 5,
            "max_constructor_retry_count": 3,  # a replica that cannot open the bundle fails the deploy soon
        }
        if self.autoscale is None:
            options["num_replicas"] = self.replicas
        else:
            low, high = self.autoscale
            options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                             "initial_replicas": max(low, 1),
                                             "target_ongoing_requests": max(1.0, max_batch / 4)}
        return options


def parse_autoscale(text: str) -> tuple[int, int]:
    """--autoscale MIN,MAX: 0 <= MIN <= MAX, MAX >= 1."""
    parts = text.split(",")
    try:
        low, high = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or high is None or not 0 <= low <= high or high < 1:
        raise UserError(f"--autoscale {text!r} is not MIN,MAX replicas: give two whole numbers with "
                        "0 <= MIN <= MAX and MAX >= 1, e.g. --autoscale 1,4")
    return low, high


class ReplicaHeader:
    """ASGI middleware adding `X-Sdrt-Replica: <Ray's replica id>` to every response, so a client (and the
    Ray test) can see which replica served it."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.lower().encode(), replica.encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


class SdrtReplica:
    """One Ray Serve replica: a Pipeline, its BatchingEngine, and the app. `application()` wraps it with
    `serve.ingress()`, which calls `__serve_build_asgi_app__` after the constructor."""

    def __init__(self, config: ReplicaConfig) -> None:
        from ray import serve

        from ..runtime import Pipeline
        from ..runtime.cpu_policy import spin_for_this_machine
        from .batcher import BatchingEngine, warm_up_request
        from .metrics import ServeMetrics

        self.config = config
        self.replica = serve.get_replica_context().replica_tag
        spin = spin_for_this_machine(config.spin, config.threads)
        self.pipeline = Pipeline.load(config.bundle, backend=config.backend, precision=config.precision,
                                      threads=config.threads, engines_dir=config.engines_dir, spin=spin.spin)
        # Warm up here rather than in the engine's thread: Ray routes requests to a replica only once its
        # constructor returns, and a bundle that cannot run fails the deployment with its own message.
        self.pipeline.generate(warm_up_request(self.pipeline.model))  # an inpainting bundle takes no txt2img
        self.metrics = ServeMetrics()
        self.engine = BatchingEngine(self.pipeline, max_batch=config.max_batch, max_queue=config.max_queue,
                                     observer=self.metrics, warmup=False).start()
        log.info("sdrt replica %s: %s (%s; %s)", self.replica, config.bundle, self.pipeline.backend_choice, spin)

    def __serve_build_asgi_app__(self) -> Any:
        from .app import create_app
        from .model_info import ServedModel

        app = create_app(self.engine, self.config.settings, ServedModel.from_pipeline(self.pipeline), self.metrics)
        app.add_middleware(ReplicaHeader, replica=self.replica)
        return app

    def __del__(self) -> None:
        """Ray calls this once the replica has no request left (graceful shutdown): stop the loop, free
        the engines."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.drain(timeout=self.config.settings.request_timeout)
            engine.close()
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            pipeline.close()


def application(config: ReplicaConfig, scale: RayScale) -> Any:
    """The Ray Serve application (`Deployment.bind(...)`) serving `config` with `scale` replicas."""
    from ray import serve

    ingress = serve.ingress()(SdrtReplica)
    options = scale.deployment_options(config.max_batch, config.max_queue, config.settings.request_timeout)
    return serve.deployment(ingress, **options).bind(config)


def deploy(config: ReplicaConfig, scale: RayScale, host: str, port: int) -> None:
    """Start Serve's HTTP proxy on host:port (on a Ray instance already initialised) and run the application;
    returns once every replica has loaded and warmed up. A replica that fails becomes one UserError."""
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(application(config, scale), name=APP_NAME, route_prefix="/")
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(exc).__name__
        raise UserError(f"Ray Serve could not start the sdrt replicas ({reason}): see the replica logs under "
                        "/tmp/ray/session_latest/logs/serve") from None


def serve_until_signal(config: ReplicaConfig, scale: RayScale, host: str, port: int, address: str | None,
                       announce: Callable[[str], None]) -> None:
    """`sdrt serve --ray`: start a local Ray instance (or attach to `address`), deploy, serve until SIGTERM
    or Ctrl-C, then take the application down: Serve lets requests in flight finish first. A Ray instance
    started here is shut down; on an existing cluster only sdrt's application is removed."""
    import ray
    from ray import serve

    started_ray = not ray.is_initialized()
    if started_ray:
        try:
            if address is None:
                ray.init(include_dashboard=False, logging_level=logging.WARNING)
            else:
                ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as exc:
            reason = " ".join(str(exc).split())
            raise UserError(f"cannot attach to the Ray cluster at --ray-address {address} ({reason}): start one "
                            "with `ray start --head`, or give the head's HOST:6379") from None
    try:
        deploy(config, scale, host, port)
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            size = f"{scale.autoscale[0]}..{scale.autoscale[1]} replicas (autoscaling)" if scale.autoscale \
                else f"{scale.replicas} replica{'s' if scale.replicas != 1 else ''}"
            announce(f"sdrt serve: {config.bundle} on http://{host}:{port} via Ray Serve ({size}, "
                     f"{scale.cpus:g} CPU and {scale.gpus:g} GPU each)")
            while not stop.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        if started_ray:
            serve.shutdown()
            ray.shutdown()
        else:
            serve.delete(APP_NAME)
