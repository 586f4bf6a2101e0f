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
import pytest

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


def test_a_key_file_with_a_byte_order_mark_keeps_its_first_key(tmp_path) -> None:
    """Windows editors start UTF-8 files with U+FEFF: it became part of the first key, which never matched."""
    from sdrt.serving.auth import key_matches, read_api_keys

    keys = tmp_path / "keys.txt"
    keys.write_bytes(b"\xef\xbb\xbfkey-one\r\nkey-two\r\n")
    assert read_api_keys(keys) == ("key-one", "key-two")
    assert key_matches("key-one", read_api_keys(keys))


def test_a_key_outside_printable_ascii_is_refused_at_start(tmp_path, capsys) -> None:
    """An Authorization header cannot carry it (servers read latin-1, clients send UTF-8): it never matched."""
    keys = tmp_path / "keys.txt"
    keys.write_text("good-key\ncl\u00e9-secr\u00e8te\n", encoding="utf-8")
    code, out, err = run_cli("serve", [str(tmp_path / "bundle"), "--api-key-file", str(keys)], capsys)
    assert (code, out) == (2, "")
    assert err == (f"error: --api-key-file {keys} has a key with a character outside printable ASCII, which an "
                   "Authorization header cannot carry: use letters, digits and punctuation\n")


@pytest.mark.parametrize("option", ["--request-timeout", "--header-timeout", "--body-timeout"])
@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_a_timeout_that_is_not_a_number_of_seconds_is_refused(tmp_path, capsys, option, value) -> None:
    code, out, err = run_cli("serve", [str(tmp_path / "bundle"), option, value], capsys)
    assert (code, out) == (2, "")
    shown = {"nan": "nan", "inf": "inf", "0": "0", "-1": "-1"}[value]
    assert err == (f"error: {option} {shown} is not a number of seconds above 0 and at most 604800 (a week): give "
                   f"e.g. {option} 300\n")


def test_an_address_not_on_this_machine_names_host_not_port(tmp_path, capsys) -> None:
    code, out, err = run_cli("serve", [str(tmp_path / "bundle"), "--host", "192.0.2.1", "--port", "7860"], capsys)
    assert (code, out) == (2, "")
    assert err == ("error: cannot listen on 192.0.2.1:7860 (Cannot assign requested address): give --host an "
                   "address of this machine, e.g. 127.0.0.1 or 0.0.0.0\n")


def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(tiny_bundle, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sdrt.cli", "serve", str(tiny_bundle("sd1")), "--port", "0",
                             "--log-level", "warning", "--max-steps", "300"], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                            text=True)
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
            body = {"prompt": "drain", "n": 2, "size": "64x64", "steps": 300, "stream": True}  # seconds of work
            with client.stream("POST", "/v1/images/generations", json=body) as r:
                lines = r.iter_lines()
                assert next(lines) == "event: progress"
                proc.send_signal(signal.SIGTERM)
                # The server keeps listening while a request is in flight: a new one is answered 503, as
                # docs/serving.md tells load balancers (it used to stop listening: refused, or reset).
                late = httpx.post(f"{url}/v1/images/generations", json={"prompt": "late", "steps": 2}, timeout=60)
                assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
                assert late.headers["Retry-After"] == "5"
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
