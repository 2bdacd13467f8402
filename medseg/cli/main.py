"""The ``medseg`` command: parses arguments, calls the library, prints results.

Built on typer (type-annotated click commands with ``--help`` on every subcommand). Heavy libraries (torch, MONAI)
are imported inside the commands that need them, so ``medseg --help`` stays fast.

Errors a user can cause end as one line ``medseg: error: PATH: PROBLEM`` and exit code 1; ``--debug`` (anywhere on
the command line) shows the traceback instead. Usage errors exit with code 2. Commands signal other exit codes with
``typer.Exit(code)``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

import typer

from medseg import __version__
from medseg.errors import MedsegError

app = typer.Typer(
    name="medseg",
    help="Segment CT and MRI volumes: convert, check datasets, plan, train, predict and evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    """Segment CT and MRI volumes."""


def _register_subcommands() -> None:
    from medseg.cli import (
        convert,
        dataset,
        evaluate,
        info,
        interop,
        listen,
        models,
        planning,
        predict,
        run,
        train,
        volumes,
    )

    info.register(app)
    models.register(app)
    convert.register(app)
    app.add_typer(dataset.app, name="dataset")
    planning.register(app)
    evaluate.register(app)
    train.register(app)
    run.register(app)
    predict.register(app)
    interop.register(app)
    volumes.register(app)
    listen.register(app)


_register_subcommands()


def _err(message: str) -> None:
    typer.echo(f"medseg: error: {message}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit code (0 success, 1 error, 2 usage error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        app(args=args, prog_name="medseg")  # typer handles usage errors and --help itself, then exits
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except MedsegError as exc:
        if debug:
            raise
        _err(str(exc))
        return 1
    except Exception as exc:
        if debug:
            raise
        _err(_describe_unexpected(exc, args))
        return 1
    return 0


_TEMPORARY = re.compile(r"(^|/)\.([^/]+?)\.tmp\d*$")


def _user_path(args: Sequence[str]) -> str:
    """The first argument naming an existing file or folder (the input the command was working on)."""
    for arg in args:
        if not arg.startswith("-") and os.path.exists(arg):
            return arg
    return f"medseg {args[0]}" if args else "medseg"


def _describe_unexpected(exc: BaseException, args: Sequence[str]) -> str:
    """One line for an error medseg did not anticipate, naming the user's file where one is known.

    Operating-system errors name their own file (a temporary name is shown as the file it stands for); running out
    of memory or recursion depth names the command's input.
    """
    from medseg.utils.files import os_problem

    if isinstance(exc, OSError):
        name = exc.filename if isinstance(exc.filename, str) else None
        if name:
            name = _TEMPORARY.sub(r"\1\2", name)
        return f"{name or _user_path(args)}: {os_problem(exc)}"
    if isinstance(exc, MemoryError):
        return f"{_user_path(args)}: not enough memory for this input"
    if isinstance(exc, RecursionError):
        return f"{_user_path(args)}: the input nests too deeply to process"
    text = " ".join(str(exc).split())[:300] or "no message"
    return f"{_user_path(args)}: {type(exc).__name__}: {text} (run again with --debug for the traceback)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
