"""`sdrt serve` as a command: one-line errors before anything loads, and SIGTERM as a drain in a real
subprocess (the request in flight completes, new ones are refused, exit code 0).

The SIGTERM test runs `sdrt serve` itself, so it needs sdrt.serving.batcher.BatchingEngine (the batching
branch of issue 10)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cli_helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent


def test_unreadable_key_file_is_one_line_exit_2(tmp_path, capsys) -> None:
    missing = tmp_path / "keys.txt"
    code, out, err = run_cli("serve", [str(tmp_path / "bundle"), "--api-key-file", str(missing)], capsys)
    assert (code, out) == (2, "")
    assert err == (f"error: cannot read --api-key-file {missing} (No such file or directory): give a readable "
                   "UTF-8 text file with one key per line\n")


def test_key_file_without_keys_is_one_line_exit_2(tmp_path, capsys) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("\n  \n# a comment\n")
    code, out, err = run_cli("serve", [str(tmp_path / "bundle"), "--api-key-file", str(keys)], capsys)
    assert (code, out, err) == (2, "", f"error: --api-key-file {keys} holds no key: put one key per line\n")


def test_taken_port_is_one_line_exit_2(tmp_path, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, out, err = run_cli("serve", [str(tmp_path / "bundle"), "--port", str(port)], capsys)
    assert (code, out) == (2, "")
    assert err == (f"error: cannot listen on 127.0.0.1:{port} (Address already in use): choose another --port, "
                   "or stop what is using it\n")


def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(tiny_bundle, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sdrt.cli", "serve", str(tiny_bundle("sd1")), "--port", "0",
                             "--log-level", "warning"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        found = re.search(r" on http://127\.0\.0\.1:(\d+) ", first)
        assert found, first
        url = f"http://127.0.0.1:{found.group(1)}"
        with httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(600):  # /readyz turns 200 once the engine has warmed up (bounded: 60 s)
                if client.get("/readyz").status_code == 200:
                    break
                time.sleep(0.1)
            assert client.get("/readyz").status_code == 200
            body = {"prompt": "drain", "n": 2, "size": "64x64", "steps": 150, "stream": True}
            with client.stream("POST", "/v1/images/generations", json=body) as r:
                lines = r.iter_lines()
                assert next(lines) == "event: progress"
                proc.send_signal(signal.SIGTERM)
                # A new connection is refused outright, answered 503 while uvicorn still listens, or reset:
                # the kernel resets a connection still queued on the listening socket when uvicorn closes it.
                try:
                    late = httpx.post(f"{url}/v1/images/generations", json={"prompt": "late", "steps": 2}, timeout=60)
                    assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
                except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                    pass
                rest = list(lines)
            assert [line for line in rest if line.startswith("event: ")][-1] == "event: done"
            done = json.loads(rest[rest.index("event: done") + 1][len("data: "):])
            assert len(done["data"]) == 2
        assert proc.wait(timeout=120) == 0
        assert proc.stderr.read().splitlines()[-1] == "sdrt serve: stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
