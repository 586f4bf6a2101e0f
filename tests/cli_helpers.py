"""Running `sdrt` in-process the way a shell would: the exit code and what went to stdout and stderr."""

from __future__ import annotations

import pytest

from sdrt.cli import main


def run_cli(command: str, args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([command, *args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err
