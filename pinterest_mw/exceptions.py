"""The exceptions raised by `pinterest_mw`, all under one base class.

```
ConversionsError
├── ConfigurationError     bad token, ad account or option, at construction
├── EventValidationError   an event that cannot be built (every field at fault)
├── UnusableValueError     a personal-data value its field rule cannot use
├── QueueFullError         the delivery queue is full under the "raise" policy
│   └── OutboxError        ... or its outbox failed to store the events
├── TransportError         the network failed: connection, timeout, protocol
└── APIError               Pinterest answered with an error status, or ...
    ├── RateLimitError     ... that status was 429
    └── UnreadableResponseError
                           ... a 2xx that is not Pinterest's answer
```

No message or `repr` produced here ever holds the access token or the value
of an event field: field errors name the path and the rule, API errors carry
Pinterest's own code and message. A path part that is a key the caller chose
(`user_data.<key>`), which may itself be personal data, is shown as
`<unknown key>`; `FieldError.path` keeps it as given.

`TransportError` and `APIError` raised by a transport's `send()` carry the
`SendResult` of the whole call as `send_result`: what became of every event,
those sent before the failure included.

Every exception here survives `pickle` and `copy` with its attributes and
message intact, so it can cross a process boundary (multiprocessing, a task
queue) unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .transport import SendResult

__all__ = [
    "APIError",
    "ConfigurationError",
    "ConversionsError",
    "EventValidationError",
    "FieldError",
    "OutboxError",
    "QueueFullError",
    "RateLimitError",
    "TransportError",
    "UnreadableResponseError",
    "UnusableValueError",
]


class ConversionsError(Exception):
    """Base class of every error raised by `pinterest_mw`."""


class ConfigurationError(ConversionsError):
    """A client, transport or app was configured with an unusable option."""


@dataclass(frozen=True, slots=True, repr=False)
class FieldError:
    """One problem with one field of an event, named by its path.

    `path` is dotted from the event (or from the request body, for the
    endpoints), such as `data.2.custom_data.value`; `message` says which rule
    failed and never repeats the offending value.

    Privacy: `path` is kept as given, so it may hold a key the caller chose
    (`user_data.jane@example.com`), and such a key may be personal data.
    `str()` and `repr()` show every part that is not one of our field names
    or an index as `<unknown key>`; show `path` itself only to whoever sent
    the key.
    """

    path: str
    message: str

    def __str__(self) -> str:
        return f"{_shown(self.path)}: {self.message}"

    def __repr__(self) -> str:
        return f"FieldError(path={_shown(self.path)!r}, message={self.message!r})"


def _shown(path: str) -> str:
    # Imported here: the field names come from the event model, which
    # imports this module.
    from ._field_paths import safe_path

    return safe_path(path)


class EventValidationError(ConversionsError, ValueError):
    """An event could not be built; `errors` lists every field at fault.

    The message names each path as `FieldError` shows it, caller's keys
    hidden; the paths in `errors` are kept as given (see `FieldError`).
    """

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        count = len(errors)
        noun = "problem" if count == 1 else "problems"
        details = "; ".join(str(error) for error in errors)
        super().__init__(f"invalid event, {count} {noun}: {details}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds from `args`, which hold the message, not the
        # list of errors.
        return (type(self), (self.errors,), self.__dict__)


class UnusableValueError(ConversionsError, ValueError):
    """A personal-data value that its field rule cannot use.

    Raised by the public `normalize_*` functions; the message is the reason
    and never holds the value. `hash_user_data` never lets it out: it drops
    the value and records a `FieldWarning` instead.
    """


class QueueFullError(ConversionsError):
    """The delivery queue had no room and the overflow policy is "raise".

    The request hooks (`@track_conversion`, route rules) also hand one to
    their `on_error` when the client did not accept an event under another
    policy: a full queue, a closed client or a failing outbox, which the
    client's own log line tells apart.
    """


class OutboxError(QueueFullError):
    """The outbox failed to store events under the "raise" policy.

    A disk full or a file locked past its busy timeout, for a `SQLiteOutbox`;
    the storage error is chained as `__cause__`. Nothing of the call was
    stored. A `QueueFullError`, so that one `except` covers both refusals.
    """


class TransportError(ConversionsError):
    """Pinterest could not be reached: connection, timeout or protocol failure.

    The underlying httpx exception is chained as `__cause__`. Raised by a
    transport's `send()`, it carries that call's `send_result` (see
    `APIError`).
    """

    send_result: SendResult | None = None


# Statuses that say "try again" without blaming the request: 408 Request
# Timeout and 429 Too Many Requests (every 5xx is retryable too).
_RETRYABLE_STATUSES = frozenset({408, 429})


class APIError(ConversionsError):
    """Pinterest answered a request with an error status.

    Attributes:
        status_code: the HTTP status.
        code: Pinterest's numeric error code from the body, when it sent one.
        message: Pinterest's message from the body, when it sent one.
        retry_after: seconds Pinterest asked us to wait, when it said so.
        send_result: when raised by a transport's `send()`, what became of
            every event of the call: the results of the requests before this
            one, and the others `not_sent`. None from `send_batch()`.
    """

    send_result: SendResult | None = None

    def __init__(
        self,
        status_code: int,
        code: int | None = None,
        message: str | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.code = code
        self.message = message
        self.retry_after = retry_after
        text = f"Pinterest answered {status_code}"
        if code is not None:
            text += f" (code {code})"
        if message:
            text += f": {message}"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds from `args`, which hold the finished message;
        # the state restores `retry_after` and `send_result`.
        return (type(self), (self.status_code, self.code, self.message), self.__dict__)

    @property
    def is_retryable(self) -> bool:
        """Whether sending the same request again may succeed.

        True for 408 (Request Timeout), 429 and every 5xx.
        """
        return self.status_code in _RETRYABLE_STATUSES or self.status_code >= 500


class RateLimitError(APIError):
    """Pinterest answered 429: too many requests for this ad account."""


UNREADABLE_RESPONSE_MESSAGE = (
    "Pinterest's answer could not be read as per-event results; "
    "the events may or may not have been recorded"
)


class UnreadableResponseError(APIError):
    """Pinterest's address answered 2xx with a body that is not Pinterest's answer.

    A body that is not a JSON object shaped like Pinterest's answer (a
    captive portal's or a proxy's page, an empty 204) most likely never came
    from Pinterest, so the request counts as failed and as retryable.
    Whether Pinterest de-duplicates a resent event by its `event_id` is not
    confirmed (only events from the Pinterest tag and this API are said to
    be), so a resend risks counting an event twice if the page did come
    from Pinterest after all. A 2xx that is Pinterest's answer but without
    one result per event is not this error: its events are reported
    `unconfirmed` and not resent (see `EventStatus.UNCONFIRMED`).
    `message` is ours and never quotes the body.
    """

    def __init__(self, status_code: int, *, retry_after: float | None = None) -> None:
        super().__init__(
            status_code, None, UNREADABLE_RESPONSE_MESSAGE, retry_after=retry_after
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status_code,), self.__dict__)

    @property
    def is_retryable(self) -> bool:
        """Always: the answer most likely did not come from Pinterest."""
        return True
