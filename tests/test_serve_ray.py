"""`sdrt serve --ray`: the batching server in Ray Serve replicas behind Ray's HTTP proxy (issue 10 section 5).

A local Ray instance on CPU (2 CPUs), 2 replicas of 1 CPU each on the tiny SD1 bundle: 40 requests over real
HTTP through Ray's proxy all succeed and both replicas serve some. Ray is shut down at the end, so nothing
keeps running. The option checks of `sdrt serve --ray` run in-process and start nothing.
"""

from __future__ import annotations

import base64
import io
import socket
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from cli_helpers import run_cli
from sdrt.serving.ray_deploy import REPLICA_HEADER, RayScale, ReplicaConfig, deploy, parse_autoscale


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def local_ray():
    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_behind_rays_proxy_serve_40_requests(local_ray, tiny_bundle) -> None:
    port = free_port()
    config = ReplicaConfig(bundle=str(tiny_bundle("sd1")), threads=1, max_batch=8, max_queue=64)
    deploy(config, RayScale(replicas=2, cpus=1), "127.0.0.1", port)

    def generate(i: int) -> httpx.Response:
        body = {"prompt": f"ray {i}", "size": "64x64", "steps": 2, "seed": i, "cfg": 1.0 + i % 3}
        return httpx.post(f"http://127.0.0.1:{port}/v1/images/generations", json=body, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(generate, range(40)))
    assert [r.status_code for r in responses] == [200] * 40
    for i, r in enumerate(responses):
        (item,) = r.json()["data"]
        assert item["seed"] == i
        assert Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).size == (64, 64)
    served = Counter(r.headers[REPLICA_HEADER] for r in responses)
    assert len(served) == 2, served  # both replicas served some of the 40
    assert sum(served.values()) == 40
    # every route of `sdrt serve` is there, answered by a replica
    models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30)
    assert models.status_code == 200 and models.headers[REPLICA_HEADER] in served
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30).json() == {"ready": True, "draining": False}


@pytest.mark.parametrize("text", ["3", "2,1", "a,b", "0,0", "-1,2", "1,2,3"])
def test_autoscale_that_is_not_min_max_is_one_line(text: str) -> None:
    from sdrt.errors import UserError

    with pytest.raises(UserError) as info:
        parse_autoscale(text)
    assert str(info.value) == (f"--autoscale {text!r} is not MIN,MAX replicas: give two whole numbers with "
                               "0 <= MIN <= MAX and MAX >= 1, e.g. --autoscale 1,4")


def test_autoscale_parses() -> None:
    assert parse_autoscale("0,4") == (0, 4)
    assert parse_autoscale("2,2") == (2, 2)


def test_deployment_options_fixed_and_autoscaled() -> None:
    fixed = RayScale(replicas=3, cpus=2, gpus=0.5).deployment_options(max_batch=8, max_queue=64, request_timeout=60)
    assert fixed == {"name": "sdrt", "ray_actor_options": {"num_cpus": 2, "num_gpus": 0.5},
                     "max_ongoing_requests": 72, "graceful_shutdown_timeout_s": 65,
                     "max_constructor_retry_count": 3, "num_replicas": 3}
    scaled = RayScale(autoscale=(0, 4)).deployment_options(max_batch=8, max_queue=64, request_timeout=60)
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 4, "initial_replicas": 1,
                                            "target_ongoing_requests": 2.0}


@pytest.mark.parametrize("args, message", [
    (["--replicas", "2"], "--replicas, --autoscale, --gpus-per-replica, --cpus-per-replica and --ray-address "
                          "need --ray: add --ray to serve on Ray Serve"),
    (["--ray", "--replicas", "2", "--autoscale", "1,3"], "--replicas and --autoscale exclude each other: give "
                                                         "a fixed number of replicas or a MIN,MAX range"),
    (["--ray", "--autoscale", "3,1"], "--autoscale '3,1' is not MIN,MAX replicas: give two whole numbers with "
                                      "0 <= MIN <= MAX and MAX >= 1, e.g. --autoscale 1,4"),
])
def test_ray_option_errors_are_one_line_exit_2(tmp_path, capsys, args, message) -> None:
    code, out, err = run_cli("serve", [str(tmp_path / "bundle"), *args], capsys)
    assert (code, out, err) == (2, "", f"error: {message}\n")


def test_ray_without_the_extra_is_one_line_exit_2(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the package
    code, out, err = run_cli("serve", [str(tmp_path / "bundle"), "--ray"], capsys)
    assert (code, out, err) == (2, "", "error: sdrt serve --ray needs Ray Serve (ray is missing): "
                                       "pip install 'sdrt[serve]'\n")


def test_ray_with_a_missing_bundle_fails_before_ray_starts(tmp_path, capsys) -> None:
    import ray

    code, out, err = run_cli("serve", [str(tmp_path / "nothing"), "--ray"], capsys)
    assert (code, out, err) == (2, "", f"error: bundle {tmp_path / 'nothing'} does not exist: check the path, or "
                                       "create one with sdrt export\n")
    assert not ray.is_initialized()


def test_ray_address_without_a_cluster_is_one_line_exit_2(tiny_bundle, capsys, monkeypatch) -> None:
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    bundle = tiny_bundle("sd1")
    capsys.readouterr()  # the fixture's export output, when it builds the bundle now
    code, out, err = run_cli("serve", [str(bundle), "--ray", "--ray-address", "auto"], capsys)
    assert (code, out) == (2, "")
    assert err == ("error: cannot attach to the Ray cluster at --ray-address auto (Could not find any running Ray "
                   "instance. Please specify the one to connect to by setting `--address` flag or `RAY_ADDRESS` "
                   "environment variable.): start one with `ray start --head`, or give the head's HOST:6379\n")
    assert not ray.is_initialized()
