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
                           ... a 2xx without one result per event sent
```

No message or `repr` produced here ever holds the access token or the value
of an event field: field errors name the path and the rule, API errors carry
Pinterest's own code and message.

`TransportError` and `APIError` raised by a transport's `send()` carry the
`SendResult` of the whole call as `send_result`: what became of every event,
those sent before the failure included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field of an event, named by its path.

    `path` is dotted from the event (or from the request body, for the
    endpoints), such as `data.2.custom_data.value`; `message` says which rule
    failed and never repeats the offending value.
    """

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class EventValidationError(ConversionsError, ValueError):
    """An event could not be built; `errors` lists every field at fault."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        count = len(errors)
        noun = "problem" if count == 1 else "problems"
        details = "; ".join(str(error) for error in errors)
        super().__init__(f"invalid event, {count} {noun}: {details}")


class UnusableValueError(ConversionsError, ValueError):
    """A personal-data value that its field rule cannot use.

    Raised by the public `normalize_*` functions; the message is the reason
    and never holds the value. `hash_user_data` never lets it out: it drops
    the value and records a `FieldWarning` instead.
    """


class QueueFullError(ConversionsError):
    """The delivery queue had no room and the overflow policy is "raise"."""


class OutboxError(QueueFullError):
    """The outbox failed to store events under the "raise" policy.

    A disk full or a file locked past its busy timeout, for a `SQLiteOutbox`;
    the storage error is chained as `__cause__`. Nothing of the call was
    stored. A `QueueFullError`, so that one `except` covers both refusals.

    .. versionadded:: 0.2
    """


class TransportError(ConversionsError):
    """Pinterest could not be reached: connection, timeout or protocol failure.

    The underlying httpx exception is chained as `__cause__`. Raised by a
    transport's `send()`, it carries that call's `send_result` (see
    `APIError`).
    """

    send_result: SendResult | None = None


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

    @property
    def is_retryable(self) -> bool:
        """Whether sending the same request again may succeed."""
        return self.status_code == 429 or self.status_code >= 500


class RateLimitError(APIError):
    """Pinterest answered 429: too many requests for this ad account."""


UNREADABLE_RESPONSE_MESSAGE = (
    "Pinterest's answer could not be read as per-event results; "
    "the events may or may not have been recorded"
)


class UnreadableResponseError(APIError):
    """Pinterest answered 2xx, but not with one result per event sent.

    A body that is not JSON (a captive portal's or a proxy's page), that
    lacks the `events` list, or whose list does not match the request's
    events, tells nothing of what became of them. So the request counts as
    failed, and as retryable: Pinterest de-duplicates a resent event by its
    `event_id`. `message` is ours and never quotes the body.
    """

    def __init__(self, status_code: int, *, retry_after: float | None = None) -> None:
        super().__init__(
            status_code, None, UNREADABLE_RESPONSE_MESSAGE, retry_after=retry_after
        )

    @property
    def is_retryable(self) -> bool:
        """Always: the events' fate is unknown, and a resend is de-duplicated."""
        return True
