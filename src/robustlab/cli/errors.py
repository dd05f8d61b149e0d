"""The CLI's one error boundary: every refusal is one ``error:`` line that names the flag and the fix.

Two places turn errors into that line, and no command writes its own:

- :class:`Commands` (the command group): click's usage errors (``--n 0``, an unknown flag), without
  click's boxed panel;
- :func:`boundary` (a decorator on every command): the library's :class:`~robustlab.core.RobustlabError`
  and ``OSError`` (exit code 2), its messages' Python keywords (``milestones=(100, 105)``)
  rewritten as the command's flags (``--milestones 100,105``) by :func:`cli_words`; and Ctrl-C inside
  a command's :func:`on_interrupt` block, which says what was saved and how to resume (exit 130;
  Ctrl-C elsewhere, before any work, exits with 130 and no message).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar, cast

import typer
from typer.core import TyperGroup

from ..core import RobustlabError
from .console import error_line

PROG = "robustlab"
INVOCATION: list[str] = []  # the arguments of the running command, for "rerun to resume" hints

# click's exception base, found through a public class (typer >= 0.2x vendors click)
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)

Command = TypeVar("Command", bound=Callable[..., Any])


def rerun() -> str:
    """The command that was run, to print in a 'rerun to resume' hint."""
    return shlex.join([PROG, *INVOCATION])


class Commands(TyperGroup):
    """Typer's command group, with click's usage errors as one ``error:`` line (no boxed panel)."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        INVOCATION[:] = argv
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except _ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `robustlab` alone: the help, as typer shows it
                return super().main(argv, prog_name, complete_var, standalone_mode=standalone_mode, **extra)
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            error_line(f"{e.format_message()}{hint}")  # type: ignore[attr-defined]
            rv = int(getattr(e, "exit_code", 2))
        except typer.Abort:
            error_line("aborted")
            rv = 1
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


# ---------------------------------------------------------------------------------------------
# library messages in the CLI's words


def flags_of(command: Callable[..., Any], **renames: str) -> dict[str, str]:
    """Python keyword -> CLI flag for a command: its parameters, plus library names it renames."""
    flags = {name: "--" + name.replace("_", "-") for name in inspect.signature(command).parameters}
    return {**flags, **renames}


_PLURALS = {"batterys": "batteries"}


def _with_value(flag: str, listed: bool = False) -> Callable[[re.Match[str]], str]:
    """A regex replacement ``flag value``; a listed ``(100, 105)`` becomes ``100,105``."""

    def replace(m: re.Match[str]) -> str:
        value = m.group(1).strip()
        if listed:
            value = re.sub(r"[,\s]+", ",", value)
        return f"{flag} {value}"

    return replace


def cli_words(message: str, flags: dict[str, str]) -> str:
    """Rewrite Python keywords in a library message as the command's flags.

    ``milestones=(100, 105)`` -> ``--milestones 100,105``; ``include_pooling=True`` ->
    ``--include-pooling``; ``resume=False`` -> ``--no-resume``; ``root=`` -> ``--root``;
    ``_sd() got an unexpected keyword argument 'p'`` -> ``does not take --p``; ``limit must`` ->
    ``--limit must``; ``n=None`` -> ``leave out --n``; ``must be None or`` -> ``must be`` (a flag
    is never None).
    """
    for wrong, right in _PLURALS.items():
        message = message.replace(wrong, right)
    message = message.replace("must be None or ", "must be ")

    def unexpected(m: re.Match[str]) -> str:
        name = m.group(2)
        return f"does not take {flags.get(name, '--' + name.replace('_', '-'))}"

    message = re.sub(r"(\w+\(\) )?got an unexpected keyword argument '(\w+)'", unexpected, message)
    for name in sorted(flags, key=len, reverse=True):
        flag = flags[name]
        word = rf"(?<![\w./\-']){re.escape(name)}"
        message = re.sub(word + r"=True\b", flag, message)
        message = re.sub(word + r"=False\b", "--no-" + flag[2:], message)
        message = re.sub(word + r"=None\b", "leave out " + flag, message)
        message = re.sub(word + r"(?= ?(<=|>=|<|>) )", flag, message)
        message = re.sub(word + r"=[(\[]([^()\[\]]*)[)\]]", _with_value(flag, listed=True), message)
        message = re.sub(word + r"='([^']*)'", _with_value(flag), message)
        message = re.sub(word + r"=(?=[\s,;)]|$)", flag, message)
        message = re.sub(word + r"=(?=\S)", flag + " ", message)
        message = re.sub(word + r"\b(?= must\b)", flag, message)
        if "_" in name:  # "(grad_clip)", not a plain word such as "(epochs)"
            message = re.sub(r"\(" + re.escape(name) + r"\)", f"({flag})", message)
        message = re.sub(r"takes no option " + re.escape(name) + r"\b", f"takes no {flag}", message)
    return message


def os_error(e: OSError) -> RobustlabError:
    """An OSError (a path that cannot be read or written, a full disk) as one line naming the path."""
    where = f" {e.filename}" if e.filename else ""
    return RobustlabError(f"cannot use{where}: {e.strerror or e}; check the path and its permissions")


def fail(e: Exception, flags: dict[str, str] | None = None) -> NoReturn:
    """Print ``e`` as one ``error:`` line in the CLI's words and exit with code 2."""
    error_line(cli_words(str(e), flags or {}))
    raise typer.Exit(code=2)


# ---------------------------------------------------------------------------------------------
# the boundary


class Interrupted(Exception):
    """Ctrl-C during a command's long work; the message says what was saved and how to resume."""


@contextlib.contextmanager
def on_interrupt(describe: Callable[[], str]) -> Iterator[None]:
    """Turn Ctrl-C inside the block into :class:`Interrupted` with the message ``describe()``
    returns (called then, so it can say how far the work got)."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(describe()) from None


def boundary(**renames: str) -> Callable[[Command], Command]:
    """Decorate a command so its errors leave as one ``error:`` line.

    ``renames`` maps library keywords that are not the command's parameters to its flags
    (``boundary(limit="--n")``: ``run_battery``'s ``limit`` is ``evaluate``'s ``--n``).
    """

    def decorate(command: Command) -> Command:
        flags = flags_of(command, **renames)

        @functools.wraps(command)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except Interrupted as e:
                error_line(str(e))
                raise typer.Exit(code=130) from None
            except RobustlabError as e:
                fail(e, flags)
            except OSError as e:
                fail(os_error(e), flags)

        return cast(Command, guarded)

    return decorate
