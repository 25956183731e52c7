"""The exception classes: their messages, and copies across processes."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from pinterest_mw import exceptions
from pinterest_mw.events import parse_event
from pinterest_mw.exceptions import (
    APIError,
    ConfigurationError,
    ConversionsError,
    EventValidationError,
    FieldError,
    OutboxError,
    QueueFullError,
    RateLimitError,
    TransportError,
    UnreadableResponseError,
    UnusableValueError,
)
from pinterest_mw.transport import EventResult, EventStatus, SendResult


def sent_result(error: ConversionsError) -> SendResult:
    result = EventResult(0, "evt-0", "checkout", EventStatus.NOT_SENT, "failed")
    return SendResult([result], [error])


def api_error_with_its_send_result() -> APIError:
    error = APIError(503, 4197, "ramped down", retry_after=2.5)
    error.send_result = sent_result(error)
    return error


EXAMPLES: dict[str, ConversionsError] = {
    "ConversionsError": ConversionsError("base"),
    "ConfigurationError": ConfigurationError("timeout must be finite"),
    "EventValidationError": EventValidationError(
        [FieldError("custom_data.value", "must be a number"), FieldError("a", "b")]
    ),
    "UnusableValueError": UnusableValueError("not an email address"),
    "QueueFullError": QueueFullError("the queue is full"),
    "OutboxError": OutboxError("the outbox could not store the events"),
    "TransportError": TransportError("Pinterest request timed out (ReadTimeout)"),
    "APIError": APIError(400, 4196, "Invalid request"),
    "APIError-send_result": api_error_with_its_send_result(),
    "RateLimitError": RateLimitError(429, 8, "slow down", retry_after=3.0),
    "UnreadableResponseError": UnreadableResponseError(200, retry_after=1.0),
}


def test_the_examples_cover_every_exception_class():
    classes = {
        value
        for value in vars(exceptions).values()
        if isinstance(value, type) and issubclass(value, ConversionsError)
    }

    assert classes == {type(example) for example in EXAMPLES.values()}


def state_of(error: BaseException) -> tuple[Any, ...]:
    attributes = {
        name: getattr(error, name, None)
        for name in ("status_code", "code", "message", "retry_after", "errors")
    }
    send_result = getattr(error, "send_result", None)
    results = send_result.results if send_result is not None else None
    return type(error), str(error), error.args, attributes, results


DUPLICATES = {
    "pickle": lambda error: pickle.loads(pickle.dumps(error)),
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
}


@pytest.mark.parametrize("duplicate", DUPLICATES.values(), ids=DUPLICATES.keys())
@pytest.mark.parametrize("error", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_an_exception_survives_pickle_and_copy_unchanged(error, duplicate):
    """Errors cross process boundaries (multiprocessing, task queues) as
    pickles; rebuilt from their message they came back garbled (#2)."""
    assert state_of(duplicate(error)) == state_of(error)


def test_a_pickled_send_result_still_lists_the_error_that_carries_it():
    back = pickle.loads(pickle.dumps(api_error_with_its_send_result()))

    assert back.send_result is not None
    assert back.send_result.errors[0] is back


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (403, False),
        (408, True),
        (422, False),
        (429, True),
        (500, True),
        (503, True),
        (504, True),
    ],
)
def test_a_status_is_retryable_when_a_resend_may_succeed(status, retryable):
    """408 Request Timeout is a timeout, retried like one (#3)."""
    assert APIError(status).is_retryable is retryable


def test_an_unreadable_answer_is_always_retryable():
    assert UnreadableResponseError(200).is_retryable


# --- caller's keys in paths ------------------------------------------------------

CALLER_KEY = "jane.doe@example.com"


def event_with_a_caller_key() -> dict[str, Any]:
    return {
        "event_name": "checkout",
        "action_source": "web",
        "user_data": {CALLER_KEY: "v", "em": "ann@example.com"},
    }


def test_the_message_hides_a_key_the_caller_chose():
    """A key may itself be personal data: the message reaches logs and Sentry (#2)."""
    with pytest.raises(EventValidationError) as caught:
        parse_event(event_with_a_caller_key())

    assert CALLER_KEY not in str(caught.value)
    assert "user_data.<unknown key>: is not a field" in str(caught.value)


def test_the_errors_keep_the_path_as_given():
    """Code that answers the caller may still name the caller's own key."""
    with pytest.raises(EventValidationError) as caught:
        parse_event(event_with_a_caller_key())

    assert [error.path for error in caught.value.errors] == [f"user_data.{CALLER_KEY}"]


@pytest.mark.parametrize("show", [str, repr], ids=["str", "repr"])
def test_a_field_error_shows_a_caller_key_hidden(show):
    error = FieldError(f"data.3.user_data.{CALLER_KEY}", "is not a field")

    assert CALLER_KEY not in show(error)
    assert "data.3.user_data.<unknown key>" in show(error)


def test_a_field_error_shows_our_own_paths_whole():
    error = FieldError("custom_data.contents.0.item_price", "must be a number")

    assert str(error) == "custom_data.contents.0.item_price: must be a number"
