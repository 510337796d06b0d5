"""The typer app, the root callback and the error boundary shared by every command."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from cellgen import __version__
from cellgen.errors import CellgenError

app = typer.Typer(
    name="cellgen",
    help="Learn how living cells change shape over time and generate new 3D+t cell shapes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"verbose": False}

F = TypeVar("F", bound=Callable[..., Any])


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cellgen {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging; tracebacks on errors.")] = False,
) -> None:
    """cellgen: prepare -> train -> generate -> evaluate."""
    _state["verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def is_verbose() -> bool:
    return _state["verbose"]


def command(name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """Register a command whose user errors become one line on stderr and exit code 2."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except CellgenError as err:
                if _state["verbose"]:
                    import traceback

                    traceback.print_exc()
                typer.echo(err.user_line, err=True)
                raise typer.Exit(err.exit_code) from None
            except KeyboardInterrupt:
                typer.echo("cellgen: interrupted", err=True)
                raise typer.Exit(130) from None

        app.command(name, **kwargs)(wrapper)
        return fn

    return decorate


def info(message: str) -> None:
    """A status line for the user (stderr, so stdout stays clean for results)."""
    typer.echo(message, err=True)


def print_result(message: str) -> None:
    typer.echo(message)


def flush() -> None:  # pragma: no cover
    sys.stdout.flush()
