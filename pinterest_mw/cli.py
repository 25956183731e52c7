"""The `pinterest-mw` command line.

```
pinterest-mw serve                the track endpoints as a standalone server
pinterest-mw send FILE            offline conversions from CSV or JSON Lines
pinterest-mw validate FILE        the checks of `send`, without sending
pinterest-mw hash FIELD VALUE     a value's normalized form and SHA-256 digest
pinterest-mw outbox [retry]       what the outbox holds; re-queue rejected events
pinterest-mw fake-api             a fake Pinterest API to send to, on 127.0.0.1
```

Configuration comes from options and the environment:
`PINTEREST_ACCESS_TOKEN` (read from the environment only: an option would
show the token to anyone running `ps`), `PINTEREST_AD_ACCOUNT_ID`,
`PINTEREST_API_URL`, `PINTEREST_TEST_MODE`, `PINTEREST_DEFAULT_REGION`,
`PINTEREST_OUTBOX`, and for `serve` `PINTEREST_TEST_ENDPOINT`,
`PINTEREST_ALLOW_ORIGINS` and `PINTEREST_TRUSTED_PROXIES`. An option wins
over its variable; yes/no variables take 1, true, yes, on, 0, false, no, off.

Exit statuses: 0 success; 1 some rows failed (invalid, or rejected by
Pinterest), or `hash` found the value unusable; 2 an error (bad option or
configuration, no command, a file without rows, unreadable file, failed
authentication or request, an address `serve` cannot listen on); 130
interrupted; 143 terminated (SIGTERM: `send` then sums up what it sent,
as after Ctrl-C). `serve` flushes on SIGTERM and SIGINT, then logs
"pinterest-mw stopped" and exits 0 after SIGTERM, 130 after SIGINT, with
or without `--workers`; `fake-api` exits with those statuses too. Errors,
usage errors included, are one line on stderr; `--debug` adds the
traceback of an unexpected one. Library warnings go to stderr once each:
through rich on a terminal, as `pinterest-mw: warning: ...` lines
otherwise; the command's own warnings are always such lines.

Privacy: the token is never printed or logged (`fake-api` prints the
fake's published one). Reports name rows by line and fields by path, never
by value: a reason that would repeat a value of its row is withheld.
`serve` logs no request (no IP address, no URL) unless `--access-log` asks
for uvicorn's access log.

The commands are plain functions registered by `build_app()`. Their
annotations name typer only in strings (postponed evaluation), so this
module imports without the `cli` extra and `main()` can say in one line
what to install instead of showing a traceback.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import dataclasses
import functools
import inspect
import io
import itertools
import json
import logging
import logging.config
import os
import re
import signal
import socket
import sqlite3
import stat
import sys
import threading
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import (
    IO,
    TYPE_CHECKING,
    Annotated,
    Any,
    Final,
    NamedTuple,
    NoReturn,
    ParamSpec,
    TypeVar,
)

import anyio.to_thread

from ._env import env_flag
from ._field_paths import safe_path
from ._version import __version__
from .client import DEFAULT_OUTBOX_PATH, NOT_SENDING_MESSAGE, Client
from .events import (
    ActionSource,
    AppInfo,
    CustomData,
    DeviceInfo,
    Event,
    WireEvent,
    parse_event,
)
from .exceptions import (
    APIError,
    ConfigurationError,
    ConversionsError,
    EventValidationError,
    FieldError,
    TransportError,
)
from .hashing import (
    HASHED_FIELDS,
    PLAIN_FIELDS,
    FieldWarning,
    UnusableValueError,
    check_default_region,
    hash_user_data,
    is_sha256_hex,
    normalize_city,
    normalize_country,
    normalize_date_of_birth,
    normalize_email,
    normalize_external_id,
    normalize_gender,
    normalize_ip_address,
    normalize_maid,
    normalize_name,
    normalize_phone,
    normalize_state,
    normalize_zip,
)
from .outbox import OutboxStats, RejectedEvent, SQLiteOutbox
from .transport import MAX_BATCH_SIZE, EventResult, EventStatus, Transport

if TYPE_CHECKING:
    from .testing import FakePinterestAPI

_missing_extra: ImportError | None = None
try:
    import typer
    from rich.console import Console
    from rich.logging import RichHandler
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )
    from typer.core import TyperGroup
except ImportError as exc:  # pragma: no cover - a subprocess test
    _missing_extra = exc

__all__ = ["build_app", "main"]

logger = logging.getLogger(__name__)

MISSING_EXTRA_MESSAGE: Final = (
    "the pinterest-mw command line needs its extra: pip install 'pinterest-mw[cli]'"
)

EXIT_OK: Final = 0
EXIT_ROWS_FAILED: Final = 1
EXIT_ERROR: Final = 2
EXIT_INTERRUPTED: Final = 130
EXIT_TERMINATED: Final = 143  # 128 + SIGTERM, as a shell reports it

NOT_SENDING_LINE: Final = (
    "Not sending: events are validated, hashed and kept in %s, not sent. "
    "To send them, set PINTEREST_ACCESS_TOKEN and PINTEREST_AD_ACCOUNT_ID "
    "and restart: stored events go out first."
)
SERVING_LINE: Final = "pinterest-mw serving on %s (%s)"
STOPPED_LINE: Final = "pinterest-mw stopped"

_ENV_TOKEN: Final = "PINTEREST_ACCESS_TOKEN"  # noqa: S105 - the variable's name, not a token
_ENV_AD_ACCOUNT: Final = "PINTEREST_AD_ACCOUNT_ID"
_ENV_API_URL: Final = "PINTEREST_API_URL"
_ENV_TEST_MODE: Final = "PINTEREST_TEST_MODE"
_ENV_OUTBOX: Final = "PINTEREST_OUTBOX"
_ENV_ALLOW_ORIGINS: Final = "PINTEREST_ALLOW_ORIGINS"
_ENV_TRUSTED_PROXIES: Final = "PINTEREST_TRUSTED_PROXIES"
_ENV_DEFAULT_REGION: Final = "PINTEREST_DEFAULT_REGION"
_ENV_TEST_ENDPOINT: Final = "PINTEREST_TEST_ENDPOINT"
# Read by `serve` only (the library takes these as Client/SQLiteOutbox options).
_ENV_MAX_QUEUE_SIZE: Final = "PINTEREST_MAX_QUEUE_SIZE"
_ENV_MAX_QUEUE_BYTES: Final = "PINTEREST_MAX_QUEUE_BYTES"
_ENV_OVERFLOW: Final = "PINTEREST_OVERFLOW"
_ENV_BLOCK_TIMEOUT: Final = "PINTEREST_BLOCK_TIMEOUT"
_ENV_MAX_REJECTED: Final = "PINTEREST_MAX_REJECTED"
_ENV_REJECTED_RETENTION: Final = "PINTEREST_REJECTED_RETENTION"
# How `serve --workers N` hands its options to the worker processes (never
# the token: that stays in PINTEREST_ACCESS_TOKEN, inherited as it is).
_ENV_SERVE_OPTIONS: Final = "_PINTEREST_MW_SERVE_OPTIONS"

# Where each library option is set from the command line, for error messages.
_OPTION_SOURCES: Final = {
    "access_token": _ENV_TOKEN,
    "ad_account_id": f"--ad-account-id or {_ENV_AD_ACCOUNT}",
    "api_url": f"--api-url or {_ENV_API_URL}",
    "default_region": f"--default-region or {_ENV_DEFAULT_REGION}",
    "outbox": f"--outbox or {_ENV_OUTBOX}",
    "flush_interval": "--flush-interval",
}

_UNCONFIRMED_REASON: Final = (
    "unconfirmed: Pinterest took the request, but its answer gave no result"
    " for this row; it was not sent again"
)

_SHOWN_PROBLEMS: Final = 20
_PROGRESS_EVERY: Final = 100


# --- errors -------------------------------------------------------------------


class _CommandError(Exception):
    """A one-line error for the user: printed on stderr, then exit `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _fail(message: str) -> NoReturn:
    raise _CommandError(message)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is, so that a command stops the same way."""


def _interruption_word(interruption: KeyboardInterrupt) -> str:
    return "terminated" if isinstance(interruption, _Terminated) else "interrupted"


def _interruption_status(interruption: KeyboardInterrupt) -> int:
    if isinstance(interruption, _Terminated):
        return EXIT_TERMINATED
    return EXIT_INTERRUPTED


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Inside the block, SIGTERM raises `_Terminated` in the main thread.

    A service manager (or `timeout`) stopping `send` then gets the summary
    and the `--start-line` hint that Ctrl-C gives, not a silent end. Outside
    the main thread, or where SIGTERM is ignored, nothing changes.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    ):
        yield
        return

    def terminate(signal_number: int, frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _describe_error(exc: BaseException) -> str:
    """One line for an error of ours, naming where an option is set."""
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or type(exc).__name__}{where}"
    text = " ".join(str(exc).split())
    if isinstance(exc, ConfigurationError):
        for option, source in _OPTION_SOURCES.items():
            if text.startswith(option):
                return f"{text} (set by {source})"
    return text


def _error_line(message: str) -> None:
    print(f"pinterest-mw: error: {message}", file=sys.stderr)


def _warning_line(message: str) -> None:
    """A warning of the command itself, on stderr; never holds a value."""
    print(f"pinterest-mw: warning: {message}", file=sys.stderr)


_debug: contextvars.ContextVar[bool] = contextvars.ContextVar("debug", default=False)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _command(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a command, turning its errors into one line and an exit status.

    Usage errors are typer's own and never reach this wrapper (`_Group`
    shows them in one line); the commands run inside it both under the test
    runner and in a real process.
    """

    @functools.wraps(function)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return function(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except KeyboardInterrupt as interruption:
            _error_line(_interruption_word(interruption))
            raise typer.Exit(_interruption_status(interruption)) from None
        except Exception as exc:  # noqa: BLE001 - the one line promised for any failure
            _error_line(_failure_line(exc))
            raise typer.Exit(_failure_status(exc)) from None

    return run


def _failure_status(exc: Exception) -> int:
    return exc.exit_code if isinstance(exc, _CommandError) else EXIT_ERROR


def _failure_line(exc: Exception) -> str:
    """The line for a failure; the traceback too on stderr with --debug."""
    if isinstance(exc, _CommandError):
        return str(exc)
    if _debug.get():
        traceback.print_exc(file=sys.stderr)
    if isinstance(exc, ConversionsError | OSError | sqlite3.Error):
        return _describe_error(exc)
    # The message of an unexpected error may quote a value read from a file,
    # so only its type is shown unless --debug asks for more.
    if _debug.get():
        return f"unexpected {type(exc).__name__}"
    return f"unexpected {type(exc).__name__} (run with --debug for details)"


_POSSIBLE_OPTIONS: Final = re.compile(r"\s*\(Possible options: ([^)]*)\)")
_DID_YOU_MEAN: Final = re.compile(r"\.?\s*Did you mean (.*?)\?$")
_NOT_PARSED: Final = re.compile(
    r"Input should be a valid (\w+), unable to parse string as an? \w+"
)


def _usage_line(exc: typer.TyperException) -> str:
    """A usage error in one line: click's message, a suggestion, the help to see.

    `No such option: --dryrun (did you mean --dry-run?); see 'pinterest-mw
    send --help'`.
    """
    message = " ".join(exc.format_message().split())
    message = _POSSIBLE_OPTIONS.sub(
        lambda match: f" (did you mean {' or '.join(match[1].split(', '))}?)",
        message,
    )
    message = _DID_YOU_MEAN.sub(r" (did you mean \1?)", message)
    message = _NOT_PARSED.sub(r"not a valid \1", message)
    message = message.replace("Value error, ", "").rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message
    return f"{message}; see '{ctx.command_path} --help'"


if _missing_extra is None:

    class _Group(TyperGroup):
        """The root command: usage errors and Ctrl-C in one line, no box.

        click would print usage, a hint and the error on three lines (typer
        in a box), and "Aborted!" with status 1 on Ctrl-C outside a command.
        """

        def main(  # type: ignore[override]
            self,
            args: Sequence[str] | None = None,
            prog_name: str | None = None,
            complete_var: str | None = None,
            standalone_mode: bool = True,
            **extra: Any,
        ) -> Any:
            try:
                status = super().main(
                    args, prog_name, complete_var, standalone_mode=False, **extra
                )
            except typer.TyperException as exc:
                _error_line(_usage_line(exc))
                status = exc.exit_code
            except typer.Abort:
                _error_line("interrupted")
                status = EXIT_INTERRUPTED
            if not standalone_mode:
                return status
            sys.exit(status or EXIT_OK)


# --- the typer application ----------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Process:
    """Passed by `main()`: the command owns the process, so it sets up logging.

    Under a test runner there is none, and the host's logging stays as it is.
    """

    owns_logging: bool = True


def _owns_logging(ctx: typer.Context) -> bool:
    root = ctx.find_root()
    return isinstance(root.obj, _Process) and root.obj.owns_logging


def _stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="PINTEREST_MW_DEBUG",
            help="Show the traceback of an unexpected error.",
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.")
    ] = False,
) -> None:
    """Send conversions to Pinterest's Conversions API.

    Exit statuses: 0 success, 1 some rows failed, 2 error, 130 interrupted,
    143 terminated.
    """
    _debug.set(debug)
    if version:
        print(f"pinterest-mw {__version__}")
        raise typer.Exit
    if ctx.invoked_subcommand is None:
        # A command is needed: the help goes where usage errors go.
        print(ctx.get_help(), file=sys.stderr)
        raise typer.Exit(EXIT_ERROR)
    if _owns_logging(ctx):
        _log_to_terminal()


def _log_to_terminal() -> None:
    """Log warnings on stderr, each record once and on one line when piped.

    On a terminal RichHandler shows the level in its own column, so the
    message goes alone (basicConfig's format would repeat level and logger);
    into a pipe or file, rich would wrap long lines, so they go plain.
    """
    console = _stderr_console()
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_time=False, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter("%(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)


class _PlainFormatter(logging.Formatter):
    """`pinterest-mw: warning: message`, like the command's error lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"pinterest-mw: {record.levelname.lower()}: {super().format(record)}"


def build_app() -> typer.Typer:
    """The `pinterest-mw` application (a `typer.Typer`).

    Raises ImportError naming the extra to install when typer or rich is
    missing.
    """
    if _missing_extra is not None:  # pragma: no cover - a subprocess test
        raise ImportError(MISSING_EXTRA_MESSAGE) from _missing_extra

    app = typer.Typer(
        name="pinterest-mw",
        cls=_Group,
        invoke_without_command=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
    app.callback()(_root)
    app.command("serve")(_command(serve))
    app.command("send")(_command(send))
    app.command("validate")(_command(validate))
    app.command("hash")(_command(hash_value))
    app.command("fake-api")(_command(fake_api))
    outbox_app = typer.Typer(
        name="outbox",
        invoke_without_command=True,
        add_completion=False,
        rich_markup_mode=None,
        help=outbox_summary.__doc__,
    )
    outbox_app.callback()(_command(outbox_summary))
    outbox_app.command("retry")(_command(outbox_retry))
    app.add_typer(outbox_app)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line (the `pinterest-mw` script)."""
    if _missing_extra is not None:  # pragma: no cover - a subprocess test
        _error_line(MISSING_EXTRA_MESSAGE)
        sys.exit(EXIT_ERROR)
    command = typer.main.get_command(build_app())
    command.main(
        args=list(sys.argv[1:] if argv is None else argv),
        prog_name="pinterest-mw",
        obj=_Process(),
    )


# --- shared options -----------------------------------------------------------


class FileFormat(StrEnum):
    """The formats `send` and `validate` read."""

    CSV = "csv"
    JSONL = "jsonl"


class Overflow(StrEnum):
    """What `serve` does with an event when the outbox is full."""

    DROP_NEWEST = "drop_newest"
    BLOCK = "block"
    RAISE = "raise"


class LogLevel(StrEnum):
    """Log levels for `serve`."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def _check_region(region: str | None) -> str | None:
    if not (region or "").strip():
        return None
    try:
        return check_default_region(region)
    except ConfigurationError:
        _fail(
            f"--default-region (or {_ENV_DEFAULT_REGION}) must be a two-letter"
            " region code, such as US"
        )


def _env_flag(name: str) -> bool:
    """A yes/no variable, read as the library reads PINTEREST_TEST_MODE."""
    try:
        return env_flag(name)
    except ConfigurationError as exc:
        _fail(str(exc))


def _plural(count: int, noun: str) -> str:
    """`1 row`, `2 rows`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _split(values: Sequence[str] | None) -> tuple[str, ...]:
    """Repeated option values, each also split on commas."""
    return tuple(
        item.strip()
        for value in values or ()
        for item in value.split(",")
        if item.strip()
    )


def _credentials(ad_account_id: str | None) -> tuple[str, str]:
    """The token and the ad account for `send`; say which one is missing."""
    token = os.environ.get(_ENV_TOKEN, "").strip() or None
    account = (ad_account_id or "").strip() or None
    missing = []
    if token is None:
        missing.append(_ENV_TOKEN)
    if account is None:
        missing.append(f"{_ENV_AD_ACCOUNT} (or --ad-account-id)")
    if token is None or account is None:
        _fail(
            f"sending needs {' and '.join(missing)}; "
            "use `pinterest-mw validate` to check a file without them"
        )
    return token, account


# Option types shared by several commands. They call typer, so they exist
# only when it is installed; the commands name them in string annotations.
if _missing_extra is None:
    FileArgument = Annotated[
        Path,
        typer.Argument(
            help="A CSV or JSON Lines file (- for standard input, with --format).",
            metavar="FILE",
            show_default=False,
        ),
    ]
    FormatOption = Annotated[
        FileFormat | None,
        typer.Option(
            "--format",
            help="csv or jsonl; by default from the file's extension.",
            case_sensitive=False,
            show_default=False,
        ),
    ]
    MapOption = Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            metavar="COLUMN=FIELD",
            help="Rename a column: 'Their Header=email'. 'Their Header=' ignores it."
            " Repeatable. Every COLUMN must be in a CSV file's header (JSON"
            " Lines keys may vary by line).",
            show_default=False,
        ),
    ]
    EventNameOption = Annotated[
        str | None,
        typer.Option(help="The event name of rows that have none.", show_default=False),
    ]
    ActionSourceOption = Annotated[
        ActionSource,
        typer.Option(help="The action source of rows that have none."),
    ]
    RegionOption = Annotated[
        str | None,
        typer.Option(
            "--default-region",
            "--region",
            envvar=_ENV_DEFAULT_REGION,
            help="Region of phone numbers without a country code, such as US.",
            show_default=False,
        ),
    ]
    ReportOption = Annotated[
        Path | None,
        typer.Option(
            help="Write every problem to this CSV file (line, status, field, message).",
            show_default=False,
        ),
    ]
    DelimiterOption = Annotated[
        str | None,
        typer.Option(
            help="The CSV delimiter [default: tab for .tsv files, else a comma].",
            show_default=False,
        ),
    ]
    AdAccountOption = Annotated[
        str | None,
        typer.Option(
            envvar=_ENV_AD_ACCOUNT, help="The ad account id.", show_default=False
        ),
    ]
    ApiUrlOption = Annotated[
        str | None,
        typer.Option(
            help=f"The API's base URL [env: {_ENV_API_URL}; default: Pinterest's].",
            show_default=False,
        ),
    ]
    OutboxPathOption = Annotated[
        Path | None,
        typer.Option(
            "--outbox",
            "--path",
            envvar=_ENV_OUTBOX,
            help=f"The outbox file [default: {DEFAULT_OUTBOX_PATH}].",
            show_default=False,
        ),
    ]


# --- reading files ------------------------------------------------------------

Path_ = tuple[str | int, ...]

_NESTED_OBJECTS: Final = {
    "user_data": frozenset(
        {
            *HASHED_FIELDS,
            *HASHED_FIELDS.values(),
            *PLAIN_FIELDS,
            "ip_address",
            "user_agent",
        }
    ),
    "custom_data": frozenset({*CustomData.model_fields, "np"}),
    "app_info": frozenset(AppInfo.model_fields),
    "device_info": frozenset({*DeviceInfo.model_fields, "type"}),
}
_EVENT_FIELDS: Final = frozenset(Event.model_fields) - set(_NESTED_OBJECTS)
# Bare column names that belong in a nested object: user data first (their
# names never clash with event fields), custom data last.
_SHORTCUTS: Final = ("user_data", "custom_data")

_UNKNOWN_COLUMN_HINT: Final = (
    "rename it with --map 'HEADER=FIELD' or leave it out with --map 'HEADER='"
)
_NOT_A_HEADER: Final = (
    "the first line is not a header: none of its cells names an event field;"
    " it must name the columns (event_name, event_time, email, ...), or"
    " --map them"
)
_UNKNOWN_KEY: Final = (
    "key {position} is an unknown key, not an event field: rename it with"
    " --map 'KEY=FIELD' or leave it out with --map 'KEY='"
)


def _column_path(name: str) -> Path_ | None:
    """Where a column's value goes in the event, or None for an unknown column.

    `email` -> ("user_data", "email"), `value` -> ("custom_data", "value"),
    `event_time` -> ("event_time",), `custom_data.contents.0.id` ->
    ("custom_data", "contents", 0, "id"). Matching ignores case.
    """
    parts = name.strip().lower().split(".")
    if any(not part for part in parts) or parts[0].isdigit():
        return None
    keys: list[str | int] = [int(p) if p.isdigit() else p for p in parts]
    head = parts[0]
    if head in _NESTED_OBJECTS:
        if len(keys) < 2 or keys[1] not in _NESTED_OBJECTS[head]:
            return None
        return tuple(keys)
    if head in _EVENT_FIELDS:
        return (head,) if len(keys) == 1 else None
    for nested in _SHORTCUTS:
        if head in _NESTED_OBJECTS[nested]:
            return (nested, *keys)

    return None


def _positions(numbers: Sequence[int]) -> str:
    """`column 4`, `columns 4 and 6`, `columns 2, 4 and 6`."""
    if len(numbers) == 1:
        return f"column {numbers[0]}"
    listed = ", ".join(str(number) for number in numbers[:-1])
    return f"columns {listed} and {numbers[-1]}"


def _column_key(name: str) -> str:
    """How `--map` matches a column: case and surrounding spaces ignored."""
    return name.strip().casefold()


class _Rename(NamedTuple):
    """One `--map` item: as given, and the field it names (None: drop it)."""

    item: str
    ours: str | None


_Mapping = Mapping[str, _Rename]


def _parse_mapping(items: Sequence[str] | None) -> dict[str, _Rename]:
    """`--map 'Their Header=email'` items, by their name as `_column_key` has it.

    Their names are matched ignoring case and surrounding spaces, as ours are.
    """
    mapping: dict[str, _Rename] = {}
    for item in items or ():
        theirs, equals, ours = item.rpartition("=")
        if not equals or not theirs.strip():
            _fail(f"--map {item!r} must be written THEIR_COLUMN=field")
        ours = ours.strip()
        if ours and _column_path(ours) is None:
            _fail(f"--map {item!r}: {ours!r} is not an event field")
        mapping[_column_key(theirs)] = _Rename(item, ours or None)

    return mapping


_DROPPED: Final[Path_] = ()


def _mapped_path(name: str, mapping: _Mapping) -> Path_ | None:
    """The path of a column after `--map`: `_DROPPED` (empty) if mapped to nothing."""
    if mapping:
        key = _column_key(name)
        if key in mapping:
            ours = mapping[key].ours
            return _DROPPED if ours is None else _column_path(ours)
    return _column_path(name)


def _set_path(target: dict[Any, Any], path: Path_, value: Any) -> bool:
    """Set `value` at `path`, creating objects on the way; False on a clash."""
    node = target
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            return False
        node = child
    last = path[-1]
    if last in node and isinstance(node[last], dict) and isinstance(value, dict):
        _merge(node[last], value)
        return True
    if last in node:
        return False
    node[last] = value

    return True


def _merge(target: dict[Any, Any], extra: Mapping[Any, Any]) -> None:
    for key, value in extra.items():
        if isinstance(target.get(key), dict) and isinstance(value, Mapping):
            _merge(target[key], value)
        else:
            target[key] = value


def _with_lists(value: Any) -> Any:
    """Turn objects keyed 0, 1, ... (from indexed columns) into lists."""
    if isinstance(value, dict):
        items = {key: _with_lists(item) for key, item in value.items()}
        if items and all(isinstance(key, int) for key in items):
            return [items[key] for key in sorted(items)]
        return items
    return value


@dataclasses.dataclass(slots=True)
class _Row:
    """One row of a file: its line, the event mapping, and reading problems.

    `skipped` rows come before `--start-line` and are only counted.
    `notes` are warnings about the row's shape, never holding a value.
    `has_id_column` says whether the file has an event_id column (None for
    JSON Lines, which has no columns).
    """

    line: int
    data: dict[str, Any]
    errors: list[FieldError] = dataclasses.field(default_factory=list)
    notes: list[FieldError] = dataclasses.field(default_factory=list)
    skipped: bool = False
    has_id_column: bool | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _RowOptions:
    mapping: _Mapping
    event_name: str | None
    action_source: ActionSource
    delimiter: str
    start_line: int = 1


class _ReadStop(Exception):
    """The file cannot be read past `line`; `reason` never holds a value."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


MAX_LINE: Final = 128 * 1024
"""The most characters a line of a file may hold, and a CSV row over several lines."""

LINE_TOO_LONG: Final = f"the line is longer than {MAX_LINE} characters"
QUOTE_NOT_CLOSED: Final = (
    "the row that starts on this line opens a quote that is never closed"
)
MULTILINE_ROW: Final = (
    "the row runs on to line {last}: a quoted cell holds line breaks (if its"
    " closing quote is misplaced, the rows in between were read into it)"
)
ROW_TOO_LONG: Final = (
    "the row that starts on this line runs over several lines and past"
    f" {MAX_LINE} characters, as when a closing quote is missing"
)


class _Lines:
    """The lines of a text stream, each read in bounded pieces.

    A line longer than `MAX_LINE` stops the reading at it before it is all
    in memory. So does a CSV row whose lines together pass it, once the
    CSV reader marks where its rows start (`start_row`): a quote that is
    never closed would otherwise take in the rest of the file. A byte that
    is not UTF-8 stops the reading at its line: the text is decoded with
    `surrogateescape`, so such a byte becomes a lone surrogate in its own
    line instead of failing the decoding of a whole block of lines.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.number = 0
        self._stream = stream
        self._row_start: int | None = None
        self._row_size = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = self._stream.readline(MAX_LINE + 1)
        if not line:
            raise StopIteration
        self.number += 1
        self._row_size += len(line)
        start = self._row_start
        if start is not None and start < self.number and self._row_size > MAX_LINE:
            raise _ReadStop(start, ROW_TOO_LONG)
        if len(line) > MAX_LINE:
            raise _ReadStop(self.number, LINE_TOO_LONG)
        if not line.isascii():
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                raise _ReadStop(self.number, "the line is not UTF-8 text") from None

        return line

    def start_row(self) -> int:
        """Count the next lines as one row, until the next call; its first line."""
        self._row_start = self.number + 1
        self._row_size = 0

        return self._row_start


def _finish_row(row: _Row, options: _RowOptions) -> _Row:
    data = _with_lists(row.data)
    if options.event_name is not None:
        data.setdefault("event_name", options.event_name)
    data.setdefault("action_source", str(options.action_source))
    if "event_time" not in data:
        row.errors.append(
            FieldError(
                "event_time", "is required in a file: when the conversion happened"
            )
        )
    row.data = data

    return row


def _csv_rows(lines: _Lines, options: _RowOptions) -> Iterator[_Row]:
    # Strict: a quote still open at the end of the file is an error, not a
    # cell holding the rest of the file (other people's rows included).
    reader = csv.reader(lines, delimiter=options.delimiter, strict=True)
    paths = _csv_header(reader, lines, options)
    if paths is None:
        return
    has_id_column = ("event_id",) in paths
    while True:
        line = lines.start_row()
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_stop(exc, line, lines) from None
        if not any(cell.strip() for cell in record):
            continue
        if line < options.start_line:
            yield _Row(line, {}, skipped=True)
            continue
        row = _Row(line, {}, has_id_column=has_id_column)
        _fill_csv_row(row, record, paths, lines.number)
        yield _finish_row(row, options)


def _csv_header(
    reader: Iterator[list[str]], lines: _Lines, options: _RowOptions
) -> list[Path_ | None] | None:
    """Where each column goes, from the first row that is not blank."""
    while True:
        start = lines.start_row()
        try:
            header = next(reader, None)
        except csv.Error as exc:
            stop = _csv_stop(exc, start, lines)
            _fail(f"line {stop.line}: not a valid CSV header: {stop.reason}")
        if header is None:
            return None
        if any(cell.strip() for cell in header):
            return _header_paths(header, options)


def _csv_stop(exc: csv.Error, start: int, lines: _Lines) -> _ReadStop:
    """Where and why a CSV row cannot be read, named by its first line.

    The csv module's messages name characters of the format, never a value.
    """
    if str(exc) == "unexpected end of data":
        return _ReadStop(start, QUOTE_NOT_CLOSED)
    if lines.number > start:
        return _ReadStop(
            start,
            f"not valid CSV ({exc}) in the row that runs from this line to line"
            f" {lines.number}, as when a closing quote is missing",
        )

    return _ReadStop(start, f"not valid CSV ({exc})")


def _fill_csv_row(
    row: _Row, record: list[str], paths: list[Path_ | None], last_line: int
) -> None:
    """Put a record's cells in `row`; note what looks wrong with its shape."""
    if len(record) > len(paths) and any(c.strip() for c in record[len(paths) :]):
        row.errors.append(
            FieldError("", f"has {len(record)} cells; the header has {len(paths)}")
        )
    if last_line > row.line:
        # A cell may hold line breaks, but a closing quote put too late
        # reads the rows in between into one cell: say where it ends.
        row.notes.append(FieldError("", MULTILINE_ROW.format(last=last_line)))
    for path, cell in zip(paths, record, strict=False):
        if path is not None and cell.strip():
            _set_path(row.data, path, cell.strip())


def _header_paths(header: list[str], options: _RowOptions) -> list[Path_ | None]:
    """Where each column goes; a column that goes nowhere stops the command.

    Columns are named by position, never by their header: a file without a
    header row has data there.
    """
    found = [_mapped_path(name, options.mapping) for name in header]
    unknown = [number for number, path in enumerate(found, 1) if path is None]
    if unknown and len(unknown) == len(found):
        _fail(_NOT_A_HEADER)
    _check_mapped_columns(header, options.mapping)
    if unknown:
        are = "is not an event field" if len(unknown) == 1 else "are not event fields"
        _fail(f"{_positions(unknown)} of the header {are}: {_UNKNOWN_COLUMN_HINT}")

    paths: list[Path_ | None] = []
    seen: dict[Path_, int] = {}
    for number, path in enumerate(found, 1):
        if path is None or path == _DROPPED:
            paths.append(None)
            continue
        clash = next((other for p, other in seen.items() if _overlaps(p, path)), None)
        if clash is not None:
            field = ".".join(str(key) for key in path)
            _fail(f"columns {clash} and {number} set the same field ({field})")
        seen[path] = number
        paths.append(path)
    has = {path[0] for path in seen}
    if "event_time" not in has:
        _fail("the file has no event_time column: when each conversion happened")
    if "event_name" not in has and options.event_name is None:
        _fail("the file has no event_name column: add one or pass --event-name")

    return paths


def _check_mapped_columns(header: Sequence[str], mapping: _Mapping) -> None:
    """Refuse a `--map` item for a column the header does not have.

    The item is quoted as given on the command line, never the header.
    """
    columns = {_column_key(name) for name in header}
    missing = [rename.item for key, rename in mapping.items() if key not in columns]
    if missing:
        listed = ", ".join(f"--map {item!r}" for item in missing)
        such = "no such column" if len(missing) == 1 else "none of these columns"
        _fail(f"{listed}: the header has {such}")


def _overlaps(first: Path_, second: Path_) -> bool:
    shorter = min(len(first), len(second))
    return first[:shorter] == second[:shorter]


def _jsonl_rows(lines: _Lines, options: _RowOptions) -> Iterator[_Row]:
    for line, content in enumerate(lines, start=1):
        if not content.strip():
            continue
        if line < options.start_line:
            yield _Row(line, {}, skipped=True)
            continue
        row = _Row(line, {})
        try:
            document = json.loads(content)
        except ValueError:
            row.errors.append(FieldError("", "is not valid JSON"))
            yield row
            continue
        if not isinstance(document, dict):
            row.errors.append(FieldError("", "is not a JSON object"))
            yield row
            continue
        for position, (key, value) in enumerate(document.items(), 1):
            _add_json_value(row, str(key), value, options.mapping, position)
        yield _finish_row(row, options)


def _add_json_value(
    row: _Row,
    key: str,
    value: Any,
    mapping: _Mapping,
    position: int,
) -> None:
    if value is None:
        return
    if (
        key in _NESTED_OBJECTS
        and _column_key(key) not in mapping
        and isinstance(value, dict)
    ):
        path: Path_ | None = (key,)
    else:
        path = _mapped_path(key, mapping)
    if path == _DROPPED:
        return
    if path is None:
        row.errors.append(FieldError("", _UNKNOWN_KEY.format(position=position)))
        return
    if not _set_path(row.data, path, value):
        field = ".".join(str(part) for part in path)
        row.errors.append(FieldError(field, "sets a field another key already set"))


_READERS: Final = {FileFormat.CSV: _csv_rows, FileFormat.JSONL: _jsonl_rows}


def _file_format(path: Path, given: FileFormat | None) -> FileFormat:
    if given is not None:
        return given
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return FileFormat.CSV
    if suffix in (".jsonl", ".ndjson"):
        return FileFormat.JSONL
    _fail(f"cannot tell the format of {str(path)!r} from its name: pass --format")


def _refuse_directory(path: Path, hint: str = "") -> None:
    """Stop when a path meant for a file names a directory, in the one wording."""
    if str(path) != "-" and path.is_dir():
        _fail(f"{str(path)!r} is a directory, not a file{hint}")


_Input = tuple[_Lines, Callable[[], int], int | None]


@contextlib.contextmanager
def _open_input(path: Path) -> Iterator[_Input]:
    """The file's lines, how many bytes were read so far, and its size.

    `-` is standard input. Text is UTF-8, a byte-order mark skipped; a byte
    that is not UTF-8 stops the reading at its line (see `_Lines`). Size
    and position are known for a regular file only: a pipe, a FIFO or a
    device is read all the same, its progress counted in rows.
    """
    if str(path) == "-":
        with _standard_input() as text:
            yield _Lines(text), lambda: 0, None
        return
    with path.open("rb") as binary, _utf8_text(binary) as text:
        info = os.fstat(binary.fileno())
        if stat.S_ISREG(info.st_mode):
            yield _Lines(text), binary.tell, info.st_size
        else:
            yield _Lines(text), lambda: 0, None


def _utf8_text(binary: IO[bytes]) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        binary, encoding="utf-8-sig", errors="surrogateescape", newline=""
    )


@contextlib.contextmanager
def _standard_input() -> Iterator[IO[str]]:
    """Standard input as UTF-8 text; it stays open afterwards."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:
        yield sys.stdin
        return
    text = _utf8_text(buffer)
    try:
        yield text
    finally:
        text.detach()


# --- the report ---------------------------------------------------------------


class _Status(StrEnum):
    INVALID = "invalid"
    REJECTED = "rejected"
    NOT_SENT = "not_sent"
    WARNING = "warning"


class _Report:
    """What went wrong, row by row: the first problems on the terminal, all in the file.

    Holds counts and a bounded list, never the rows, so memory stays flat.
    `by_status` counts the report's lines, so the summary agrees with the
    file. The file is opened by `open()`, once the input is open.
    """

    def __init__(self, path: Path | None, console: Console) -> None:
        self.path = path
        self.console = console
        self.counts: Counter[str] = Counter()
        self.by_status: Counter[_Status] = Counter()
        self.problems = 0
        self._file: IO[str] | None = None
        self._writer: Any = None

    def check(self, source: Path) -> None:
        """Refuse a report path that is a directory or the input itself."""
        if self.path is None:
            return
        _refuse_directory(self.path, " (the --report file)")
        if str(source) != "-" and self.path.exists() and self.path.samefile(source):
            _fail(
                f"--report {str(self.path)!r} is the input file: "
                "write the report to another file"
            )

    def create(self) -> None:
        """Create (or empty) the report file, once the input proved readable.

        Called at the first row: a file that fails on its header leaves an
        earlier report as it was.
        """
        if self.path is None or self._file is not None:
            return
        self._file = self.path.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["line", "status", "field", "message"])

    def add(
        self,
        line: int,
        status: _Status,
        field: str,
        message: str,
        *,
        by: str = "",
    ) -> None:
        """Report one problem, by line and field path, never by value.

        `by` names who wrote the message when it is not us (`Pinterest`):
        the transport has withheld any of Pinterest's that repeats a value
        sent (see `EventResult`), and ours never repeat one.
        """
        self.problems += 1
        self.by_status[status] += 1
        field = safe_path(field) if field else field
        if by:
            message = f"{by}: {message}"
        if self._writer is not None:
            self._writer.writerow([line, status.value, field, message])
        if self.problems <= _SHOWN_PROBLEMS:
            where = f"{field}: " if field else ""
            self.console.print(
                f"line {line}: {status.value}: {where}{message}", markup=False
            )

    def add_errors(
        self,
        line: int,
        status: _Status,
        errors: Sequence[FieldError],
    ) -> None:
        for error in errors:
            self.add(line, status, error.path, error.message)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def tail(self) -> str | None:
        """A closing line when problems were left off the terminal."""
        hidden = self.problems - _SHOWN_PROBLEMS
        if hidden <= 0:
            return None
        more = f"... and {hidden} more {'problem' if hidden == 1 else 'problems'}"
        if self.path is not None:
            return f"{more}, in {self.path}"
        return f"{more}: write them all with --report FILE"


# --- send and validate --------------------------------------------------------

ROW_ID_NAMESPACE: Final = uuid.UUID("5d1b3c1e-6f0e-4b8e-9a55-0c7d2f1e9b43")
"""The uuid5 namespace of the event ids `send` derives for rows without one."""

NO_EVENT_ID_COLUMN: Final = (
    "the file has no event_id column: each row is sent with an id derived"
    " from its line number and content, the same on every run of this file,"
    " so Pinterest counts a re-sent row once; give the file an event_id"
    " column (such as the order id) for ids that survive edits to the file"
)
NO_EVENT_ID_ROW: Final = (
    "line {line} has no event_id: rows without one are sent with an id"
    " derived from their line number and content, the same on every run of"
    " this file"
)


def _with_row_event_id(line: int, event: Event) -> WireEvent:
    """The event as sent, with an id derived from the row instead of a random one.

    The id is a UUID5 (namespace `ROW_ID_NAMESPACE`) over the line number, a
    newline and the event's JSON as sent with an empty event_id: a re-run of
    the same file sends the same ids. It is computed from the normalized,
    hashed event, never from a raw value, and identifies the row, not the
    person: two rows of one person get unrelated ids.
    """
    wire = event.to_wire_event()
    # The payload is compact JSON holding the random id once, in exactly
    # this form: swapping it spares serializing the event a second time.
    random_id = _event_id_member(wire.event_id)
    content = wire.payload.replace(random_id, _event_id_member(""), 1)
    if content == wire.payload:  # pragma: no cover - a serializer that changed
        raise AssertionError("the event's JSON does not hold its event_id")
    event_id = str(uuid.uuid5(ROW_ID_NAMESPACE, f"{line}\n{content.decode()}"))
    payload = wire.payload.replace(random_id, _event_id_member(event_id), 1)

    return WireEvent(event_id, wire.event_name, payload)


def _event_id_member(event_id: str) -> bytes:
    return b'"event_id":' + json.dumps(event_id).encode()


class _Run:
    """One pass over a file: what to do with its events, and how far it got."""

    def __init__(
        self,
        transport: Transport | None,
        test: bool,
        default_region: str | None,
        report: _Report,
        *,
        derive_ids: bool = False,
    ) -> None:
        self.transport = transport
        self.test = test
        self.default_region = default_region
        self.report = report
        self.derive_ids = derive_ids
        self.stopped: _ReadStop | None = None
        self.last_line = 0
        self.sent_rows = 0
        self.last_sent_line = 0
        self.in_flight = 0
        self._warned_event_id = False

    def events(self, rows: Iterator[_Row]) -> Iterator[tuple[int, WireEvent]]:
        """The rows' events; a file that breaks ends them at the break."""
        counts = self.report.counts
        try:
            for row in rows:
                self.report.create()
                if row.skipped:
                    counts["skipped"] += 1
                    continue
                counts["rows"] += 1
                self.last_line = row.line
                event = self._event(row)
                if event is None:
                    counts["invalid"] += 1
                    continue
                counts["valid"] += 1
                self._warn(row, event.warnings)
                yield row.line, self._wire_event(row, event)
        except _ReadStop as stop:
            # Ends the events normally, so the rows read before the break
            # still make their (last, partial) chunk.
            self.stopped = stop

    def _event(self, row: _Row) -> Event | None:
        self.report.add_errors(row.line, _Status.WARNING, row.notes)
        if row.errors:
            self.report.add_errors(row.line, _Status.INVALID, row.errors)
            return None
        try:
            return parse_event(row.data, default_region=self.default_region)
        except EventValidationError as exc:
            self.report.add_errors(row.line, _Status.INVALID, exc.errors)
            return None

    def _warn(self, row: _Row, warnings: Sequence[FieldWarning]) -> None:
        for warning in warnings:
            self.report.add(row.line, _Status.WARNING, warning.path, warning.reason)

    def _wire_event(self, row: _Row, event: Event) -> WireEvent:
        if not self.derive_ids or "event_id" in row.data:
            return event.to_wire_event()
        if not self._warned_event_id:
            self._warned_event_id = True
            if row.has_id_column is False:
                _warning_line(NO_EVENT_ID_COLUMN)
            else:
                _warning_line(NO_EVENT_ID_ROW.format(line=row.line))

        return _with_row_event_id(row.line, event)

    def deliver(self, chunk: list[tuple[int, WireEvent]]) -> None:
        """Send one chunk; a request that fails finally stops the command."""
        if self.transport is None:
            return
        counts = self.report.counts
        lines = [line for line, _ in chunk]
        counts["requests"] += 1
        self.in_flight = len(chunk)
        try:
            results = self.transport.send_batch(
                [event for _, event in chunk], test=self.test
            )
        except (APIError, TransportError) as exc:
            self.in_flight = 0
            counts["not_sent"] += len(chunk)
            for line in lines:
                self.report.add(line, _Status.NOT_SENT, "", f"request failed: {exc}")
            raise _CommandError(self._failed_request(lines, exc)) from exc
        self.in_flight = 0
        self.sent_rows += len(chunk)
        self.last_sent_line = lines[-1]
        for result in results:
            self._count(*chunk[result.index], result)

    def _failed_request(self, lines: Sequence[int], exc: Exception) -> str:
        """Which rows a failed request held, what was not read, what was sent."""
        reason = _describe_error(exc).rstrip(".")
        parts = [f"the request for {_span(lines)} failed: {reason}"]
        if self.stopped is not None:
            parts.append(self.stop_message(self.stopped, summed_up=False))
        elif len(lines) == MAX_BATCH_SIZE:
            # A full request: rows may follow, and were not read.
            parts.append(f"any rows after line {lines[-1]} were not read")
        parts.append(self.sent_so_far())

        return "; ".join(parts)

    def _count(self, line: int, event: WireEvent, result: EventResult) -> None:
        """Count Pinterest's answer for one row; report a warning or rejection."""
        counts = self.report.counts
        if result.status is EventStatus.UNCONFIRMED:
            # Pinterest took the request but its answer did not cover this
            # event: not resent (that could count it twice), not a failure.
            counts["unconfirmed"] += 1
            self.report.add(line, _Status.WARNING, "", _UNCONFIRMED_REASON)
            return
        if result.is_processed:
            counts["processed"] += 1
            if result.status is not EventStatus.WARNED:
                return
            status = _Status.WARNING
            message = result.warning_message or "warned without a message"
        else:
            counts["rejected"] += 1
            status = _Status.REJECTED
            message = result.error_message or "rejected without a message"
        self.report.add(line, status, "", message, by="Pinterest")

    def sent_so_far(self) -> str:
        """How much of the file reached Pinterest, and how to skip it next time."""
        if not self.sent_rows:
            return "nothing was sent"
        rows = _plural(self.sent_rows, "row")
        verb = "was" if self.sent_rows == 1 else "were"
        return (
            f"{rows} {verb} sent, the last from line {self.last_sent_line}:"
            f" re-run with --start-line {self.last_sent_line + 1} to skip them"
        )

    def stop_message(self, stop: _ReadStop, *, summed_up: bool = True) -> str:
        """Why the file was read no further, and what was done before."""
        where = f"stopped at line {stop.line}: {stop.reason}"
        if not summed_up:
            return where
        if self.transport is not None:
            return f"{where}; {self.sent_so_far()}"
        before = self.report.counts["rows"]
        if not before:
            return f"{where}; no row came before it"
        verb = "was" if before == 1 else "were"
        return f"{where}; the {_plural(before, 'row')} before it {verb} checked"

    def interrupted_message(self, interruption: KeyboardInterrupt) -> str:
        """What an interrupted (or terminated) `send` had done, for a re-run."""
        how = _interruption_word(interruption)
        message = f"{how} at line {self.last_line}; {self.sent_so_far()}"
        if self.in_flight:
            message += (
                f"; the {_plural(self.in_flight, 'row')} of the request under way"
                " may have reached Pinterest (a re-run sends them with the same"
                " event ids)"
            )
        return message


def _span(lines: Sequence[int]) -> str:
    """`line 2`, `lines 2 to 8`."""
    if len(lines) == 1:
        return f"line {lines[0]}"
    return f"lines {lines[0]} to {lines[-1]}"


def _chunks(
    events: Iterator[tuple[int, WireEvent]],
) -> Iterator[list[tuple[int, WireEvent]]]:
    while chunk := list(itertools.islice(events, MAX_BATCH_SIZE)):
        yield chunk


def _tracked(
    rows: Iterator[_Row], progress: Progress, task: TaskID, position: Callable[[], int]
) -> Iterator[_Row]:
    count = 0
    for row in rows:
        yield row
        count += 1
        if count % _PROGRESS_EVERY == 0:
            progress.update(task, completed=position() or count)
    progress.update(task, completed=position() or count)


def _process_file(
    file: Path,
    *,
    file_format: FileFormat | None,
    options: _RowOptions,
    transport: Transport | None,
    test: bool,
    default_region: str | None,
    report_path: Path | None,
    dry_run: bool = False,
) -> _Report:
    """Read, validate and (with a transport) send a file; return its report.

    A request that fails after its retries, or a file that cannot be read
    further, stops the command: what was done until then is summed up, then
    the error is raised, saying what was sent. A file without rows is an
    error too.
    """
    _refuse_directory(file)
    file_format = _file_format(file, file_format)
    console = _stderr_console()
    report = _Report(report_path, console)
    run = _Run(
        transport,
        test,
        default_region,
        report,
        derive_ids=transport is not None or dry_run,
    )
    stopped: _CommandError | None = None
    try:
        with _sigterm_interrupts():
            _run_file(run, file, _READERS[file_format], options)
    except UnicodeDecodeError:
        # Only standard input without a byte stream under it gets here.
        stopped = _CommandError(f"{_input_name(file)} is not UTF-8 text")
    except _CommandError as exc:
        stopped = exc
    except KeyboardInterrupt as interruption:
        if transport is None:
            raise
        stopped = _CommandError(
            run.interrupted_message(interruption), _interruption_status(interruption)
        )
    finally:
        report.close()
    counts = report.counts
    if stopped is None and not counts["rows"]:
        stopped = _CommandError(_no_rows(file, options, sending=transport is not None))
    if counts["rows"]:
        _print_summary(report, transport, test=test, dry_run=dry_run, options=options)
    if stopped is not None:
        raise stopped

    return report


def _run_file(
    run: _Run,
    file: Path,
    reader: Callable[[_Lines, _RowOptions], Iterator[_Row]],
    options: _RowOptions,
) -> None:
    """Stream the rows of `file` through `run`, with a progress bar."""
    console = run.report.console
    run.report.check(file)
    with (
        _open_input(file) as (lines, position, size),
        _progress(console, size) as progress,
    ):
        task = progress.add_task(
            "sending" if run.transport is not None else "checking", total=size
        )
        rows = reader(lines, options)
        events = run.events(_tracked(rows, progress, task, position))
        for chunk in _chunks(events):
            run.deliver(chunk)
    if run.stopped is not None:
        raise _CommandError(run.stop_message(run.stopped))


def _input_name(file: Path) -> str:
    return "standard input" if str(file) == "-" else repr(str(file))


def _no_rows(file: Path, options: _RowOptions, *, sending: bool) -> str:
    what = "send" if sending else "check"
    if options.start_line > 1:
        return (
            f"{_input_name(file)} has no rows from line {options.start_line} on:"
            f" nothing to {what}"
        )
    return f"{_input_name(file)} has no rows: nothing to {what}"


def _progress(console: Console, size: int | None) -> Progress:
    """A progress bar on stderr, by bytes read (rows for standard input)."""
    columns: list[str | ProgressColumn] = [TextColumn("{task.description}")]
    if size is None:
        columns.append(MofNCompleteColumn())
    else:
        columns.append(BarColumn())
    columns.append(TimeElapsedColumn())

    return Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    )


def _print_summary(
    report: _Report,
    transport: Transport | None,
    *,
    test: bool,
    dry_run: bool,
    options: _RowOptions,
) -> None:
    tail = report.tail()
    if tail is not None:
        report.console.print(tail, markup=False)
    counts = report.counts
    parts = [
        f"{_plural(counts['rows'], 'row')}: {counts['valid']} valid,"
        f" {counts['invalid']} invalid"
    ]
    if counts["skipped"]:
        parts.append(f"{counts['skipped']} skipped before line {options.start_line}")
    if transport is not None:
        parts.append(
            f"{counts['processed']} processed, {counts['rejected']} rejected by"
            f" Pinterest, {counts['not_sent']} not sent"
            f" ({_plural(counts['requests'], 'request')})"
        )
        if counts["unconfirmed"]:
            parts.append(f"{counts['unconfirmed']} unconfirmed")
        if test:
            parts.append("test mode: Pinterest validated them and recorded nothing")
    elif dry_run:
        parts.append("dry run: nothing sent")
    warnings = report.by_status[_Status.WARNING]
    if warnings:
        parts.append(f"warnings: {warnings}")
    print("; ".join(parts))


def _exit_status(report: _Report) -> int:
    counts = report.counts
    if counts["invalid"] or counts["rejected"] or counts["not_sent"]:
        return EXIT_ROWS_FAILED
    return EXIT_OK


_FILE_HELP: Final = """

Columns (or JSON keys): event fields by name (event_name, event_time,
event_id, action_source, event_source_url, ...); user data by name or
Pinterest's code (email or em, phone or ph, first_name or fn, ...,
client_ip_address, client_user_agent), hashed here before anything is sent;
custom data by name (value, currency, order_id, num_items, content_ids,
...); anything nested as a dotted path, with numbers for list items
(user_data.em.1, custom_data.contents.0.item_price). Names ignore case, and
so does --map; empty cells are left out. Every row needs an event_time
(Unix seconds, milliseconds, or ISO 8601 with an offset), within the last 7
days.

Problems are reported by line and field, never by value."""

_SEND_STATUS: Final = """

Exit status: 0 every row processed, 1 some rows invalid or rejected by
Pinterest, 2 error, 130 interrupted, 143 terminated (SIGTERM)."""

_VALIDATE_STATUS: Final = """

Exit status: 0 every row valid (warnings or not), 1 some rows invalid, 2
error (the file cannot be read to its end included), 130 interrupted, 143
terminated (SIGTERM)."""

_SEND_HELP: Final = f"""

Rows without an event_id are sent with one derived from their line number
and normalized content (a UUID5): a re-run of the same file sends the same
ids, so Pinterest counts each conversion once. A file that cannot be read
to its end (a line that is not UTF-8 or longer than {MAX_LINE} characters, a
CSV quote never closed) stops at the row's first line, after sending the
rows before it; a failed request, Ctrl-C or SIGTERM stops too. Each says
how many rows were sent and the --start-line that skips them on a re-run."""


def _row_options(
    file: Path,
    mapping: list[str] | None,
    event_name: str | None,
    action_source: ActionSource,
    delimiter: str | None,
    start_line: int = 1,
) -> _RowOptions:
    if delimiter is None:
        delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
    if len(delimiter) != 1:
        _fail("--delimiter must be one character")
    return _RowOptions(
        _parse_mapping(mapping), event_name, action_source, delimiter, start_line
    )


def send(
    file: FileArgument,
    file_format: FormatOption = None,
    mapping: MapOption = None,
    event_name: EventNameOption = None,
    action_source: ActionSourceOption = ActionSource.OFFLINE,
    test: Annotated[
        bool | None,
        typer.Option(
            "--test/--no-test",
            help="Send in Pinterest's test mode: validated, not recorded"
            f" [env: {_ENV_TEST_MODE}].",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Check the configuration and the file; send nothing."
        ),
    ] = False,
    default_region: RegionOption = None,
    report: ReportOption = None,
    delimiter: DelimiterOption = None,
    ad_account_id: AdAccountOption = None,
    api_url: ApiUrlOption = None,
    start_line: Annotated[
        int,
        typer.Option(
            "--start-line",
            metavar="LINE",
            min=1,
            help="Begin at this line: rows on earlier lines are skipped, neither"
            " checked nor sent (the header is still read). To resume a send that"
            " stopped.",
        ),
    ] = 1,
) -> None:
    """Send offline conversions from a CSV or JSON Lines file, 1000 per request.

    The file is streamed, so its length does not matter. Needs
    PINTEREST_ACCESS_TOKEN and PINTEREST_AD_ACCOUNT_ID (or --ad-account-id).
    """
    options = _row_options(
        file, mapping, event_name, action_source, delimiter, start_line
    )
    region = _check_region(default_region)
    test_mode = _env_flag(_ENV_TEST_MODE) if test is None else test
    token, account = _credentials(ad_account_id)
    with Transport(token, account, api_url=api_url) as transport:
        result = _process_file(
            file,
            file_format=file_format,
            options=options,
            transport=None if dry_run else transport,
            test=test_mode,
            default_region=region,
            report_path=report,
            dry_run=dry_run,
        )
    raise typer.Exit(_exit_status(result))


def validate(
    file: FileArgument,
    file_format: FormatOption = None,
    mapping: MapOption = None,
    event_name: EventNameOption = None,
    action_source: ActionSourceOption = ActionSource.OFFLINE,
    default_region: RegionOption = None,
    report: ReportOption = None,
    delimiter: DelimiterOption = None,
) -> None:
    """Check a file as `send` would, without credentials and without sending."""
    options = _row_options(file, mapping, event_name, action_source, delimiter)
    result = _process_file(
        file,
        file_format=file_format,
        options=options,
        transport=None,
        test=False,
        default_region=_check_region(default_region),
        report_path=report,
    )
    raise typer.Exit(_exit_status(result))


send.__doc__ = (
    inspect.cleandoc(send.__doc__ or "") + _SEND_HELP + _FILE_HELP + _SEND_STATUS
)
validate.__doc__ = (
    inspect.cleandoc(validate.__doc__ or "") + _FILE_HELP + _VALIDATE_STATUS
)


# --- hash ---------------------------------------------------------------------


_NORMALIZERS: Final[dict[str, Callable[[object], str]]] = {
    "em": normalize_email,
    "fn": normalize_name,
    "ln": normalize_name,
    "ge": normalize_gender,
    "ct": normalize_city,
    "st": normalize_state,
    "zp": normalize_zip,
    "country": normalize_country,
    "external_id": normalize_external_id,
    "hashed_maids": normalize_maid,
}
_PLAIN_ALIASES: Final = {
    **PLAIN_FIELDS,
    "ip_address": "client_ip_address",
    "user_agent": "client_user_agent",
}


def _wire_code(field: str) -> str:
    key = field.strip().lower()
    if key in HASHED_FIELDS:
        return HASHED_FIELDS[key]
    if key in HASHED_FIELDS.values() or key in _PLAIN_ALIASES.values():
        return key
    if key in _PLAIN_ALIASES:
        return _PLAIN_ALIASES[key]
    names = ", ".join(sorted({*HASHED_FIELDS, *PLAIN_FIELDS}))
    _fail(f"unknown user data field {field!r}: one of {names} (or a wire code)")


def hash_value(
    field: Annotated[
        str,
        typer.Argument(
            help="email, phone, first_name, ... or em, ph, fn, ...", metavar="FIELD"
        ),
    ],
    value: Annotated[
        str,
        typer.Argument(help="The value, as another system has it.", metavar="VALUE"),
    ],
    default_region: RegionOption = None,
    date_format: Annotated[
        str | None,
        typer.Option(
            help="strptime format of an ambiguous date_of_birth, such as %m/%d/%Y.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show the normalized form of a user data value and its SHA-256 digest.

    For comparing with what a browser tag or another system sends. The
    digest is the one `send` and `serve` would send, and every warning the
    hasher gives (a phone number without a country code or region) goes to
    stderr. Exit status 1 when the value is unusable (and would be dropped).
    """
    region = _check_region(default_region)
    wire = _wire_code(field)
    label = (
        wire if wire == field.strip().lower() else f"{field.strip().lower()} ({wire})"
    )
    try:
        normalized = _normalize(wire, value, region, date_format)
    except UnusableValueError as exc:
        print(f"{label}: dropped: {exc}")
        raise typer.Exit(EXIT_ROWS_FAILED) from None
    if wire in PLAIN_FIELDS.values():
        print(f"{label}: sent unhashed")
        print(f"normalized: {normalized}")
        return
    sent = hash_user_data({wire: value}, default_region=region, date_format=date_format)
    for warning in sent.warnings:
        # The hasher's reasons never hold the value; the field is named as
        # the command line named it.
        _warning_line(f"{label}: {warning.reason}")
    digest = sent.fields[wire][0]
    if is_sha256_hex(value.strip()):
        print(f"{label}: already hashed, sent as it is (lowercased)")
    else:
        print(label)
        print(f"normalized: {normalized}")
    print(f"sha256: {digest}")


def _normalize(
    wire: str, value: str, region: str | None, date_format: str | None
) -> str:
    if wire in PLAIN_FIELDS.values():
        if wire == "client_ip_address":
            return normalize_ip_address(value)
        text = value.strip()
        if not text:
            raise UnusableValueError("empty after normalization")
        return text
    if is_sha256_hex(value.strip()):
        return value.strip().lower()
    if wire == "ph":
        return normalize_phone(value, region)
    if wire == "db":
        return normalize_date_of_birth(value, date_format)
    return _NORMALIZERS[wire](value)


# --- outbox -------------------------------------------------------------------


_OUTBOX_PATH_KEY: Final = "pinterest_mw.outbox_path"
_OUTBOX_HINT: Final = f" (set --outbox or {_ENV_OUTBOX})"


def _existing_outbox(path: Path | None, *, readonly: bool = False) -> SQLiteOutbox:
    path = path or DEFAULT_OUTBOX_PATH
    _refuse_directory(path, _OUTBOX_HINT)
    if not path.is_file():
        _fail(f"no outbox at {str(path)!r}{_OUTBOX_HINT}")
    return SQLiteOutbox(path, readonly=readonly)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _stats_document(path: Path, stats: OutboxStats) -> dict[str, Any]:
    return {
        "path": str(path),
        "pending": stats.pending,
        "deferred": stats.deferred,
        "in_flight": stats.in_flight,
        "rejected": stats.rejected,
        "size_bytes": stats.size_bytes,
        "next_attempt_at": _when(stats.next_attempt_at)
        if stats.next_attempt_at
        else None,
        "rejected_reasons": dict(stats.rejected_reasons),
        "deferred_reasons": dict(stats.deferred_reasons),
    }


def outbox_summary(
    ctx: typer.Context,
    path: OutboxPathOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object.")
    ] = False,
    rejected: Annotated[
        int,
        typer.Option(
            help="Also list this many of the latest rejected events (ids, no data).",
            min=0,
        ),
    ] = 0,
) -> None:
    """Count what the outbox holds, by state, with the reasons of failures.

    Shows counts, event ids and names, and Pinterest's reasons: never the
    events' data.
    """
    ctx.meta[_OUTBOX_PATH_KEY] = path
    if ctx.invoked_subcommand is not None:
        return
    outbox = _existing_outbox(path, readonly=True)
    try:
        stats = outbox.stats()
        listed = outbox.list_rejected(rejected) if rejected else []
    finally:
        outbox.close()
    if as_json:
        document = _stats_document(outbox.path, stats)
        document["latest_rejected"] = [_rejected_document(item) for item in listed]
        print(json.dumps(document, indent=2))
        return
    _print_stats(outbox.path, stats, listed)


def _rejected_document(item: RejectedEvent) -> dict[str, Any]:
    return {
        "event_id": item.event_id,
        "event_name": item.event_name,
        "reason": item.reason,
        "rejected_at": _when(item.rejected_at),
        "attempts": item.attempts,
    }


def _print_stats(path: Path, stats: OutboxStats, listed: list[RejectedEvent]) -> None:
    print(f"outbox: {path}")
    print(f"pending:   {stats.pending} (of which deferred: {stats.deferred})")
    print(f"in flight: {stats.in_flight}")
    print(f"rejected:  {stats.rejected}")
    print(f"size:      {stats.size_bytes} bytes (pending and in flight)")
    if stats.next_attempt_at is not None:
        print(f"next retry at: {_when(stats.next_attempt_at)}")
    for title, reasons in (
        ("rejected", stats.rejected_reasons),
        ("deferred", stats.deferred_reasons),
    ):
        if reasons:
            print(f"{title} reasons:")
            for reason, count in reasons.items():
                print(f"  {count:>7}  {reason}")
    if listed:
        print("latest rejected:")
        for item in listed:
            print(
                f"  {_when(item.rejected_at)}  {item.event_name}  {item.event_id}"
                f"  {item.reason}"
            )


def outbox_retry(
    ctx: typer.Context,
    path: OutboxPathOption = None,
    reason: Annotated[
        str | None,
        typer.Option(
            help="Only events rejected with exactly this reason, as `outbox` lists it.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Re-queue rejected events, after fixing what made Pinterest refuse them.

    They are sent by the next `pinterest-mw serve`, or by any client with
    credentials using this outbox.
    """
    outbox = _existing_outbox(path or ctx.meta.get(_OUTBOX_PATH_KEY))
    try:
        count = outbox.requeue_rejected(reason=reason)
    finally:
        outbox.close()
    which = "" if reason is None else " with that reason"
    print(f"re-queued {_plural(count, 'rejected event')}{which}")


# --- serve --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _ServeOptions:
    """What `serve` passes to each worker. Never holds the token.

    None leaves an option to the environment, as `Client.from_env` reads it.
    """

    outbox: str
    allow_origins: tuple[str, ...]
    trusted_proxies: tuple[str, ...]
    test_mode: bool | None
    test_endpoint: bool
    ad_account_id: str | None
    api_url: str | None
    default_region: str | None
    flush_interval: float
    max_queue_size: int
    max_queue_bytes: int
    overflow: str
    block_timeout: float
    max_rejected: int
    rejected_retention: float

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> _ServeOptions:
        data = json.loads(text)
        data["allow_origins"] = tuple(data["allow_origins"])
        data["trusted_proxies"] = tuple(data["trusted_proxies"])
        return cls(**data)

    @property
    def endpoints(self) -> str:
        test = " POST /track-event-test," if self.test_endpoint else ""
        return f"POST /track-event,{test} GET /health"


# The outbox bounds `serve` starts from: SQLiteOutbox's own defaults.
_OUTBOX_DEFAULTS: Final = {
    name: parameter.default
    for name, parameter in inspect.signature(SQLiteOutbox).parameters.items()
}


class _HideNotSending(logging.Filter):
    """Drops the client's own not-sending warning: `serve` says it its way."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg is not NOT_SENDING_MESSAGE


_ENV_OPTIONS: Final = ("test_mode", "ad_account_id", "api_url", "default_region")


def _serve_outbox(options: _ServeOptions) -> SQLiteOutbox:
    """The outbox of `serve`, with its bounds; the caller closes it.

    The outbox's own errors name its path; the others get it here.
    """
    _refuse_directory(Path(options.outbox), _OUTBOX_HINT)
    try:
        return SQLiteOutbox(
            options.outbox,
            options.max_queue_size,
            options.max_queue_bytes,
            max_rejected=options.max_rejected,
            rejected_retention=options.rejected_retention,
        )
    except ConfigurationError as exc:
        raise _CommandError(f"{_describe_error(exc)}{_OUTBOX_HINT}") from None
    except (OSError, sqlite3.Error) as exc:
        raise _CommandError(
            f"cannot use the outbox {options.outbox!r}: {_describe_error(exc)}"
            f"{_OUTBOX_HINT}"
        ) from None


def _serve_client(options: _ServeOptions) -> Client:
    """The client of `serve`: options win, the environment fills in the rest.

    The client does not own the outbox it is given: `_close_served` closes
    both.
    """
    outbox = _serve_outbox(options)
    overrides: dict[str, Any] = {
        "outbox": outbox,
        "flush_interval": options.flush_interval,
        "overflow": options.overflow,
        "block_timeout": options.block_timeout,
    }
    for name in _ENV_OPTIONS:
        if getattr(options, name) is not None:
            overrides[name] = getattr(options, name)
    client_logger = logging.getLogger("pinterest_mw.client")
    hide = _HideNotSending()
    client_logger.addFilter(hide)
    try:
        return Client.from_env(**overrides)
    except BaseException:
        outbox.close()
        raise
    finally:
        client_logger.removeFilter(hide)


def _close_served(client: Client) -> None:
    """Close the client of `serve`, then the outbox it was given."""
    try:
        client.close()
    finally:
        client.outbox.close()


def _serve_app(options: _ServeOptions) -> tuple[Any, Client]:
    from .asgi import pinterest_app

    client = _serve_client(options)
    # Without options, the app reads PINTEREST_ALLOW_ORIGINS and
    # PINTEREST_TRUSTED_PROXIES itself (and PINTEREST_SHARED_SECRET).
    app = pinterest_app(
        client,
        allow_origins=options.allow_origins or None,
        trusted_proxies=options.trusted_proxies or None,
        test_endpoint=options.test_endpoint,
    )
    return _Served(app, client), client


class _Served:
    """The served app: `pinterest_app(client)` plus the client's life cycle.

    At start-up the dispatcher starts, so events stored by an earlier run go
    out first; at shutdown (SIGTERM, SIGINT) it flushes what is waiting and
    the client is closed.
    """

    def __init__(self, app: Any, client: Client) -> None:
        self.app = app
        self.client = client

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await receive()  # lifespan.startup
        started = False
        try:
            async with self.client.running():
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()  # lifespan.shutdown
            await self.client.aclose()
            await anyio.to_thread.run_sync(self.client.outbox.close)
        except Exception as exc:  # noqa: BLE001 - the lifespan protocol reports any failure
            # Reported to uvicorn, which logs it and exits.
            step = "shutdown" if started else "startup"
            message = _describe_error(exc)
            await send({"type": f"lifespan.{step}.failed", "message": message})
            return
        await send({"type": "lifespan.shutdown.complete"})


def _worker_app() -> Any:
    """The app of one worker of `serve --workers N` (a uvicorn factory)."""
    options = _ServeOptions.from_json(os.environ[_ENV_SERVE_OPTIONS])
    app, _ = _serve_app(options)
    return app


def _log_config(level: LogLevel) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {
                "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
            }
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            "uvicorn": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
        },
    }


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket; an address that cannot be used is a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = _describe_error(exc)
        raise _CommandError(
            f"cannot listen on {host} port {port}: {reason[:1].lower()}{reason[1:]}"
        ) from None
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    netloc = f"[{host}]" if sock.family == socket.AF_INET6 else host
    return f"http://{netloc}:{port}"


def _log_start(client: Client, options: _ServeOptions) -> None:
    if client.is_sending:
        logger.info(
            "Sending events to ad account %s at %s%s; outbox %s",
            client.ad_account_id,
            client.api_url,
            " in test mode" if client.test_mode else "",
            options.outbox,
        )
    else:
        logger.warning(NOT_SENDING_LINE, options.outbox)


def _host(value: str) -> str:
    """`--host`: an empty address would listen on every interface."""
    if not value.strip():
        raise typer.BadParameter(
            "must not be empty: give an address, such as 127.0.0.1 (or 0.0.0.0"
            " for every interface)"
        )
    return value.strip()


if _missing_extra is None:
    HostOption = Annotated[
        str, typer.Option(help="The address to listen on.", callback=_host)
    ]
    PortOption = Annotated[
        int,
        typer.Option(
            help="The port to listen on (0: any free port).", min=0, max=65535
        ),
    ]
    WorkersOption = Annotated[
        int,
        typer.Option(help="Worker processes; they share the outbox file.", min=1),
    ]
    AllowOriginOption = Annotated[
        list[str] | None,
        typer.Option(
            "--allow-origin",
            metavar="ORIGIN",
            help="A browser origin allowed to post events, such as"
            " https://shop.example; repeatable or comma-separated"
            f" [env: {_ENV_ALLOW_ORIGINS}].",
            show_default=False,
        ),
    ]
    TrustedProxyOption = Annotated[
        list[str] | None,
        typer.Option(
            "--trusted-proxy",
            metavar="PROXY",
            help="A proxy IP or CIDR whose X-Forwarded-For is believed (uvicorn's"
            " own proxy handling is off); repeatable or comma-separated"
            f" [env: {_ENV_TRUSTED_PROXIES}].",
            show_default=False,
        ),
    ]
    ServeTestOption = Annotated[
        bool | None,
        typer.Option(
            "--test/--no-test",
            help="Send with Pinterest's test flag: validated, not recorded"
            f" [env: {_ENV_TEST_MODE}].",
            show_default=False,
        ),
    ]
    TestEndpointOption = Annotated[
        bool | None,
        typer.Option(
            "--test-endpoint/--no-test-endpoint",
            help="Also serve POST /track-event-test, which sends at once in"
            " test mode and answers with Pinterest's verdict; anyone who can"
            f" reach the server can use it [env: {_ENV_TEST_ENDPOINT}; default:"
            " off].",
            show_default=False,
        ),
    ]
    ServeOutboxOption = Annotated[
        Path | None,
        typer.Option(
            envvar=_ENV_OUTBOX,
            help=f"The outbox file [default: {DEFAULT_OUTBOX_PATH}].",
            show_default=False,
        ),
    ]
    FlushIntervalOption = Annotated[
        float,
        typer.Option(help="Seconds between deliveries of partial batches.", min=0),
    ]
    MaxQueueSizeOption = Annotated[
        int,
        typer.Option(
            metavar="EVENTS",
            envvar=_ENV_MAX_QUEUE_SIZE,
            min=1,
            help="The most events waiting in the outbox; past it, --overflow decides.",
        ),
    ]
    MaxQueueBytesOption = Annotated[
        int,
        typer.Option(
            metavar="BYTES",
            envvar=_ENV_MAX_QUEUE_BYTES,
            min=1,
            help="The most bytes of events waiting in the outbox.",
        ),
    ]
    OverflowOption = Annotated[
        Overflow,
        typer.Option(
            envvar=_ENV_OVERFLOW,
            case_sensitive=False,
            help="When the outbox is full: drop_newest keeps the events of a"
            " request that fit and refuses the rest at once, raise refuses the"
            " whole request at once, block first waits up to --block-timeout for"
            " room. The endpoint answers 503 naming the refused events, and"
            " every refused event is counted as dropped.",
        ),
    ]
    BlockTimeoutOption = Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            envvar=_ENV_BLOCK_TIMEOUT,
            min=0,
            help="How long --overflow block waits for room.",
        ),
    ]
    MaxRejectedOption = Annotated[
        int,
        typer.Option(
            metavar="EVENTS",
            envvar=_ENV_MAX_REJECTED,
            min=0,
            help="The most events Pinterest rejected kept for `outbox retry`"
            " (the oldest go first).",
        ),
    ]
    RejectedRetentionOption = Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            envvar=_ENV_REJECTED_RETENTION,
            min=0,
            help="How long rejected events are kept [default: 604800, 7 days].",
            show_default=False,
        ),
    ]
    LogLevelOption = Annotated[
        LogLevel, typer.Option(help="Log level.", case_sensitive=False)
    ]
    AccessLogOption = Annotated[
        bool,
        typer.Option(
            "--access-log",
            help="Log every request with uvicorn (client IPs and URLs included).",
        ),
    ]


def serve(
    ctx: typer.Context,
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    workers: WorkersOption = 1,
    allow_origins: AllowOriginOption = None,
    trusted_proxies: TrustedProxyOption = None,
    test: ServeTestOption = None,
    test_endpoint: TestEndpointOption = None,
    outbox: ServeOutboxOption = None,
    ad_account_id: AdAccountOption = None,
    api_url: ApiUrlOption = None,
    default_region: RegionOption = None,
    flush_interval: FlushIntervalOption = 1.0,
    max_queue_size: MaxQueueSizeOption = _OUTBOX_DEFAULTS["max_events"],
    max_queue_bytes: MaxQueueBytesOption = _OUTBOX_DEFAULTS["max_bytes"],
    overflow: OverflowOption = Overflow.DROP_NEWEST,
    block_timeout: BlockTimeoutOption = 1.0,
    max_rejected: MaxRejectedOption = _OUTBOX_DEFAULTS["max_rejected"],
    rejected_retention: RejectedRetentionOption = _OUTBOX_DEFAULTS[
        "rejected_retention"
    ],
    log_level: LogLevelOption = LogLevel.INFO,
    access_log: AccessLogOption = False,
) -> None:
    """Serve the track endpoints: POST /track-event and GET /health.

    Events are validated, hashed and written to a durable SQLite outbox
    before the endpoint answers, then delivered in batches. Without
    PINTEREST_ACCESS_TOKEN and PINTEREST_AD_ACCOUNT_ID nothing is sent: events
    are kept in the outbox until a run with credentials. SIGTERM and SIGINT
    flush waiting events before the server exits, with status 0 after
    SIGTERM and 130 after SIGINT, with or without --workers.
    Client IPs come from the connection, or from X-Forwarded-For sent by a
    --trusted-proxy.
    """
    options = _ServeOptions(
        outbox=str(outbox or DEFAULT_OUTBOX_PATH),
        allow_origins=_split(allow_origins),
        trusted_proxies=_split(trusted_proxies),
        test_mode=test,
        test_endpoint=_env_flag(_ENV_TEST_ENDPOINT)
        if test_endpoint is None
        else test_endpoint,
        ad_account_id=(ad_account_id or "").strip() or None,
        api_url=api_url,
        default_region=_check_region(default_region),
        flush_interval=flush_interval,
        max_queue_size=max_queue_size,
        max_queue_bytes=max_queue_bytes,
        overflow=overflow.value,
        block_timeout=block_timeout,
        max_rejected=max_rejected,
        rejected_retention=rejected_retention,
    )
    log_config = _log_config(log_level) if _owns_logging(ctx) else None
    if log_config is not None:
        logging.config.dictConfig(log_config)
    server_options: dict[str, Any] = {
        "log_config": log_config,
        "access_log": access_log,
        # Our own TrustedProxies reads X-Forwarded-For, from --trusted-proxy
        # only: uvicorn's would believe any local peer by default.
        "proxy_headers": False,
        "server_header": False,
        "timeout_graceful_shutdown": 5,
    }
    if workers > 1:
        _serve_workers(options, host, port, workers, server_options)
    else:
        _serve_one(options, host, port, server_options)


_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def _stop_status(received: Sequence[int]) -> int:
    """The exit status after a clean stop: 130 if SIGINT was among the signals.

    SIGTERM is how service managers stop a server: a clean stop, status 0.
    SIGINT is a person's Ctrl-C: status 130, as for any interrupted command.
    """
    return EXIT_INTERRUPTED if signal.SIGINT in received else EXIT_OK


def _stopped(received: Sequence[int]) -> NoReturn:
    logger.info(STOPPED_LINE)
    raise typer.Exit(_stop_status(received))


def _serve_one(
    options: _ServeOptions, host: str, port: int, server_options: dict[str, Any]
) -> None:
    import uvicorn

    app, client = _serve_app(options)
    try:
        sock = _listen(host, port)
    except _CommandError:
        _close_served(client)
        raise
    _log_start(client, options)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **server_options))
    logger.info(SERVING_LINE, _url(sock), options.endpoints)
    received, started = _run_server(server, sock)
    if received:
        _stopped(received)
    if not started:
        _fail("the server stopped at start-up (see the log above)")


def _run_server(server: Any, sock: socket.socket) -> tuple[list[int], bool]:
    """Run a uvicorn server on `sock` until a stop signal.

    Returns the stop signals received and whether the server had started.
    """
    received: list[int] = []

    def note(signal_number: int, frame: object) -> None:
        # uvicorn handles the signals while it runs, then restores this
        # handler and raises them again: noted here instead of ending the
        # process (SIGTERM's default) or raising KeyboardInterrupt.
        received.append(signal_number)
        server.should_exit = True

    previous = {sig: signal.signal(sig, note) for sig in _STOP_SIGNALS}
    started = False
    try:
        server.run(sockets=[sock])
        started = server.started
    except KeyboardInterrupt:
        received.append(signal.SIGINT)
    except SystemExit:
        logger.debug("uvicorn exited during start-up")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()

    return received, started


@contextlib.contextmanager
def _signals_received() -> Iterator[list[int]]:
    """The numbers of the signals this process receives inside the block.

    Read from a `signal.set_wakeup_fd` pipe, which Python writes each
    signal's number to whatever handler runs: the block's code (uvicorn's
    worker supervisor) installs its own handlers, and they stay untouched.
    """
    reader, writer = os.pipe()
    os.set_blocking(reader, False)
    os.set_blocking(writer, False)
    received: list[int] = []
    previous = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
    try:
        yield received
    finally:
        signal.set_wakeup_fd(previous)
        with contextlib.suppress(BlockingIOError):
            received.extend(os.read(reader, 1024))
        os.close(reader)
        os.close(writer)


def _serve_workers(
    options: _ServeOptions,
    host: str,
    port: int,
    workers: int,
    server_options: dict[str, Any],
) -> None:
    """Run `workers` processes, each building its own client and app."""
    import uvicorn

    _, client = _serve_app(options)
    _close_served(client)
    # uvicorn binds the address itself: try it first for a one-line error
    # (and a free port for --port 0).
    with _listen(host, port) as probe:
        url = _url(probe)
        port = probe.getsockname()[1]
    os.environ[_ENV_SERVE_OPTIONS] = options.to_json()
    _log_start(client, options)
    logger.info(SERVING_LINE, url, options.endpoints)
    with _signals_received() as received:
        uvicorn.run(
            # By name: under `python -m`, this module's __name__ is __main__.
            "pinterest_mw.cli:_worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            **server_options,
        )
    stops = [sig for sig in received if sig in _STOP_SIGNALS]
    if not stops:
        _fail("the workers stopped (see the log above)")
    _stopped(stops)


# --- fake-api -----------------------------------------------------------------

FAKE_API_LINE: Final = (
    "fake Pinterest API on {url} until Ctrl-C; in another shell, send to it"
    " with these variables:"
)
FAKE_API_STOPPED_LINE: Final = (
    "fake Pinterest API stopped: {requests}, {events} processed, and {tests} more"
    " in test mode (validated, not processed)"
)


def fake_api(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8001,
    latency: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", min=0, help="Seconds to wait before every answer."
        ),
    ] = 0.0,
) -> None:
    """Serve a fake of Pinterest's events endpoint, to try things without an account.

    It checks what Pinterest checks (the token, the ad account, every event)
    and answers as Pinterest would, keeping what it receives in memory
    only. It accepts one token and one ad account, those of
    `pinterest_mw.testing` (FAKE_ACCESS_TOKEN and FAKE_AD_ACCOUNT_ID): the
    lines it prints on stdout set them and its URL for `send`, `serve` and
    `Client.from_env()`. That token is a published constant, not a secret.
    It runs until Ctrl-C or SIGTERM, then counts what it took on stderr;
    exit status 0 after SIGTERM, 130 after Ctrl-C.
    """
    import uvicorn

    from .testing import FakePinterestAPI

    fake = FakePinterestAPI(latency=latency)
    sock = _listen(host, port)
    _print_fake_env(fake, _url(sock))
    # The fake sends its own Date header, from its clock.
    config = uvicorn.Config(
        fake.app,
        lifespan="off",
        log_config=None,
        access_log=False,
        date_header=False,
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    received, _ = _run_server(uvicorn.Server(config), sock)
    if not received:
        _fail("the fake API stopped at start-up (see the log above)")
    print(
        FAKE_API_STOPPED_LINE.format(
            requests=_plural(len(fake.requests), "request"),
            events=_plural(len(fake.events), "event"),
            tests=len(fake.test_events),
        ),
        file=sys.stderr,
    )
    raise typer.Exit(_stop_status(received))


def _print_fake_env(fake: FakePinterestAPI, url: str) -> None:
    """Say where the fake listens, and the variables that send to it (stdout)."""
    print(FAKE_API_LINE.format(url=url), file=sys.stderr, flush=True)
    exports = {
        _ENV_API_URL: url,
        _ENV_TOKEN: fake.access_token,
        _ENV_AD_ACCOUNT: fake.ad_account_id,
    }
    for name, value in exports.items():
        print(f"export {name}={value}", flush=True)


if __name__ == "__main__":
    # Run the imported module's `main`, so that logger names and state are
    # those of `pinterest_mw.cli` under `python -m` too.
    from pinterest_mw.cli import main as _main

    _main()
