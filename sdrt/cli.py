"""The `sdrt` command. Each subcommand lives in sdrt/commands/ and imports its heavy dependencies inside
the command body, so `sdrt generate` never loads torch and `sdrt --help` is instant."""

from __future__ import annotations

import inspect
import re
import sys

import click

from . import __version__
from .commands import COMMANDS
from .errors import UserError
from .manifest import BundleError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sdrt")
def cli() -> None:
    """Deploy Stable Diffusion models for low-latency inference."""


def first_sentence(help_text: str) -> str:
    """The first sentence of a command's help, on one line: `sdrt --help` lists it whole, where click's own
    short help cuts it at a fixed width mid-sentence."""
    paragraph = inspect.cleandoc(help_text.split("\f")[0]).split("\n\n")[0]
    text = " ".join(paragraph.split())
    match = re.match(r"(.+?[.!?])(?:\s|$)", text)
    return match.group(1) if match else text


for command in COMMANDS:
    if command.short_help is None and command.help:
        command.short_help = first_sentence(command.help)
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="sdrt", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except (UserError, BundleError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
