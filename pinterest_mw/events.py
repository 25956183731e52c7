"""The conversion event: a typed model of Pinterest's v5 event, and its builder.

`build_event("checkout", user_data={"email": ...}, custom_data={...})` makes
the common case one call; `parse_event` and `parse_events` read events that
arrive as mappings (a request body, a file). Every path ends in an `Event`
that only ever holds wire-ready data, and `Event.to_json()` is the exact
object Pinterest expects inside `{"data": [...]}`.

Python-side names explain themselves (`email`, `phone`, `zip_code`,
`named_partner`); Pinterest's wire codes (`em`, `ph`, `zp`, `np`) are
accepted as input too and are the only names in the serialized payload.

Validation follows `normalization.md`. Everything wrong with an event is
reported at once, in one `EventValidationError` whose `FieldError`s name
each field by its dotted path (`custom_data.contents.1.item_price`).

Privacy: user data is normalized and SHA-256 hashed by
`pinterest_mw.hashing` while the `UserData` model is validated, so a model
never holds a raw email, phone, name or address. `client_ip_address`,
`client_user_agent`, `click_id` and `partner_id` are kept unhashed, as
Pinterest requires. A personal-data value that cannot be normalized is
dropped with a warning (`Event.warnings`, path and reason only), never
failing the event. No error message and no `repr` or `str` of a model holds
a user-data value or hash, and no error message repeats any input value,
the event name included: a shifted column can put an email address there.
No exception raised here keeps pydantic's error (which holds the input)
as its `__context__` or `__cause__`.

An event serializes only what validation produced: `to_json()` and
`to_wire()` refuse an event whose user data holds anything but SHA-256
digests in its hashed fields, as `model_construct()` or
`model_copy(update=...)` can leave it.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import operator
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from enum import StrEnum
from functools import cache
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    ClassVar,
    NamedTuple,
    Self,
    TypeVar,
)

import pycountry
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import (
    CoreSchema,
    ErrorDetails,
    InitErrorDetails,
    PydanticCustomError,
    core_schema,
)

from ._parsing import parsed_or_none
from .exceptions import (
    ConfigurationError,
    EventValidationError,
    FieldError,
    UnusableValueError,
)
from .hashing import (
    HASHED_FIELDS,
    USER_DATA_KEYS,
    FieldWarning,
    _hash_with_rules,
    _integer_text,
    _rules,
)

__all__ = [
    "ActionSource",
    "AppInfo",
    "ContentItem",
    "CustomData",
    "DeviceInfo",
    "Event",
    "EventName",
    "FormFactor",
    "NetworkType",
    "OSFamily",
    "UserData",
    "WireEvent",
    "batch_body",
    "build_event",
    "parse_event",
    "parse_events",
]

_MAX_EVENT_AGE_SECONDS = 7 * 24 * 3600
_MAX_EVENT_LEAD_SECONDS = 5 * 60

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# 13-digit timestamps are milliseconds; 10**12 seconds lies ~30,000 years ahead.
_MILLISECONDS_FROM = 10**12
_MAX_ID_DIGITS = 64
# A tuple, not `float | Decimal`: isinstance() would build the union each call.
_FRACTIONAL_TYPES = (float, Decimal)
# A double holds 15 significant decimal digits reliably: reading a float at
# that precision turns 0.1 + 0.2 back into 0.3, what the caller meant.
_FLOAT_MONEY_FORMAT = ".15g"
# Money above 10**19 is refused and digits past the 18th decimal place are
# rounded off: far beyond any real amount, and it stops "1e999999999" from
# expanding into a gigabyte of digits.
_MONEY_MAX_ADJUSTED_EXPONENT = 18
_MONEY_MAX_PLACES = 18
_MONEY_QUANTUM = Decimal(1).scaleb(-_MONEY_MAX_PLACES)
_MONEY_CONTEXT = Context(prec=2 * (_MONEY_MAX_PLACES + 2), rounding=ROUND_HALF_EVEN)

_ADVERTISER_EVENT_NAME = re.compile(r"[A-Za-z_]+")
_NUMERIC_TEXT = re.compile(r"[0-9]{1,20}(?:\.[0-9]{0,20})?")
# Already in the form Pinterest wants, within the bounds below: kept as is.
_PLAIN_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]{0,18})(?:\.[0-9]{1,18})?")
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_LANGUAGE_TAG = re.compile(r"([A-Za-z]{2,3})(?:[-_][A-Za-z0-9-_]*)?")
# Codes ISO 639-1 withdrew that Java and older Android still write.
_LEGACY_LANGUAGE_CODES = {"iw": "he", "in": "id", "ji": "yi"}

_T = TypeVar("_T")

_OWN_ERROR_PREFIX = "pinterest_mw."
# Pydantic's own error types, reworded so that no message can echo an input.
_MESSAGES: dict[str, str] = {
    "missing": "is required",
    "extra_forbidden": "is not a field Pinterest accepts here",
    "string_type": "must be a string",
    "string_unicode": "must be valid Unicode text, without lone surrogates",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "int_parsing_size": "is too large for an integer",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "enum": "must be one of {expected}",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "string_too_long": "must have at most {max_length} characters",
    "too_long": "must have at most {max_length} items",
}
_FALLBACK_MESSAGE = "is not valid ({type})"
_MATCHING_RULE_MESSAGE = (
    "needs em, hashed_maids, or both client_ip_address and client_user_agent"
    " (after normalization)"
)


class ActionSource(StrEnum):
    """Where the conversion happened."""

    WEB = "web"
    APP_ANDROID = "app_android"
    APP_IOS = "app_ios"
    OFFLINE = "offline"


class EventName(StrEnum):
    """Pinterest's standard event names.

    `Event.event_name` also takes advertiser-defined names made of letters
    and underscores (`^[A-Za-z_]+$`), kept as plain strings. Names are
    compared as written: `Checkout` is advertiser-defined, as Pinterest
    counts it, and the event carries a warning saying so.
    """

    ADD_PAYMENT_INFO = "add_payment_info"
    ADD_TO_CART = "add_to_cart"
    ADD_TO_WISHLIST = "add_to_wishlist"
    APP_INSTALL = "app_install"
    APP_OPEN = "app_open"
    CHECKOUT = "checkout"
    CONTACT = "contact"
    CUSTOM = "custom"
    CUSTOMIZE_PRODUCT = "customize_product"
    FIND_LOCATION = "find_location"
    INITIATE_CHECKOUT = "initiate_checkout"
    LEAD = "lead"
    PAGE_VISIT = "page_visit"
    SCHEDULE = "schedule"
    SEARCH = "search"
    SIGNUP = "signup"
    START_TRIAL = "start_trial"
    SUBMIT_APPLICATION = "submit_application"
    SUBSCRIBE = "subscribe"
    VIEW_CATEGORY = "view_category"
    VIEW_CONTENT = "view_content"
    WATCH_VIDEO = "watch_video"


class FormFactor(StrEnum):
    """`device_info.form_factor`: the kind of device."""

    DESKTOP = "desktop"
    LAPTOP = "laptop"
    CELLPHONE = "cellphone"
    TABLET = "tablet"
    SMARTWATCH = "smartwatch"
    TV = "tv"
    VR = "vr"
    CONSOLE = "console"
    OTHER = "other"


class NetworkType(StrEnum):
    """`device_info.network_type`: how the device was connected."""

    WIFI = "wifi"
    CELLULAR_2G = "cellular_2g"
    CELLULAR_3G = "cellular_3g"
    CELLULAR_4G = "cellular_4g"
    CELLULAR_5G = "cellular_5g"
    CELLULAR_6G = "cellular_6g"
    ETHERNET = "ethernet"
    UNKNOWN = "unknown"


class OSFamily(StrEnum):
    """`device_info.os_family`: the operating system family."""

    IOS = "ios"
    ANDROID = "android"
    MACOS = "macos"
    WINDOWS = "windows"
    LINUX = "linux"
    BSD = "bsd"
    OTHER = "other"


_STANDARD_EVENT_NAMES: dict[str, EventName] = {name.value: name for name in EventName}


class WireEvent(NamedTuple):
    """One serialized event, as the transport, dispatcher and outbox move it.

    `payload` is the compact JSON object of the event (one item of the
    request's `data` array). Privacy: it holds hashed user data, the
    unhashed fields Pinterest requires (IP, user agent, click and partner
    ids) and custom data, so `repr` shows the event id, the event name and
    the payload's size only: a hash of an email is personal data too.
    """

    event_id: str
    event_name: str
    payload: bytes

    def __repr__(self) -> str:
        return (
            f"WireEvent(event_id={self.event_id!r}, "
            f"event_name={self.event_name!r}, payload=<{len(self.payload)} bytes>)"
        )


# --- field validators ---------------------------------------------------------
#
# Each raises PydanticCustomError with a message naming the rule, never the
# input; `_field_errors` passes these messages through unchanged.


def _fail(kind: str, message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError(_OWN_ERROR_PREFIX + kind, message, context or None)


def _validate_event_name(value: Any) -> EventName | str:
    if not isinstance(value, str):
        raise _fail("event_name_type", "must be a string")

    standard = _STANDARD_EVENT_NAMES.get(value)
    if standard is not None:
        return standard
    if _ADVERTISER_EVENT_NAME.fullmatch(value):
        return value

    raise _fail(
        "event_name",
        "is neither a standard event name nor an advertiser-defined name of"
        " letters and underscores",
    )


def _event_name_warning(name: EventName | str) -> FieldWarning | None:
    """Warn about a standard name in other letter case, which Pinterest does
    not map: it counts `Checkout` as an advertiser-defined event."""
    if type(name) is not str:
        return None
    standard = _STANDARD_EVENT_NAMES.get(name.lower())
    if standard is None:
        return None

    reason = (
        f"looks like the standard name '{standard.value}'; Pinterest's names"
        " are lower-case, and it counts this one as an advertiser-defined event"
    )
    return FieldWarning("event_name", reason, dropped=False)


def _is_finite_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)

    return isinstance(value, Decimal) and value.is_finite()


def _unix_seconds(value: Any, field: str) -> int:
    """Read a point in time as integer Unix seconds, without a window check."""
    number: int | float | Decimal
    if _is_finite_number(value):
        number = value
    elif isinstance(value, str):
        number = _text_to_timestamp(value.strip(), field)
    elif isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        number = moment.timestamp()
    else:
        raise _time_type_error(field)

    if number >= _MILLISECONDS_FROM:
        number = number // 1000 if isinstance(number, int) else number / 1000

    return math.floor(number)


def _text_to_timestamp(text: str, field: str) -> int | float:
    if _NUMERIC_TEXT.fullmatch(text):
        return int(text) if text.isdigit() else float(text)
    moment = parsed_or_none(datetime.fromisoformat, text)
    if moment is None:
        raise _time_type_error(field)
    if moment.tzinfo is None:
        raise _fail(
            "time_offset", "must carry a UTC offset when given as an ISO 8601 string"
        )

    return moment.timestamp()


def _time_type_error(field: str) -> PydanticCustomError:
    return _fail(
        f"{field}_type",
        "must be Unix seconds or milliseconds, an ISO 8601 string with an"
        " offset, or a datetime",
    )


def _context_now(info: ValidationInfo) -> int:
    now: datetime | float | None = info.context.get("now") if info.context else None
    if now is None:
        return int(time.time())
    if isinstance(now, datetime):
        moment = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        return math.floor(moment.timestamp())

    return math.floor(now)


def _validate_event_time(value: Any, info: ValidationInfo) -> int:
    if value is None:
        return int(time.time())

    seconds = _unix_seconds(value, "event_time")
    now = _context_now(info)
    if seconds < now - _MAX_EVENT_AGE_SECONDS:
        raise _fail("event_time_past", "is more than 7 days in the past")
    if seconds > now + _MAX_EVENT_LEAD_SECONDS:
        raise _fail("event_time_future", "is more than 5 minutes in the future")

    return seconds


def _validate_install_time(value: Any) -> int:
    seconds = _unix_seconds(value, "install_time")
    if seconds < 0:
        raise _fail("install_time_negative", "must not be before 1970")

    return seconds


def _new_event_id() -> str:
    return str(uuid.uuid4())


def _now_seconds() -> int:
    return int(time.time())


def _validate_event_id(value: Any) -> str:
    if value is None:
        return _new_event_id()
    if isinstance(value, str):
        if not value.strip():
            # Kept byte for byte otherwise; but one blank id shared by many
            # events would have Pinterest count them all as one.
            raise _fail("event_id_empty", "must not be empty or only spaces")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return _id_text(value)
    if isinstance(value, uuid.UUID):
        return str(value)

    raise _fail("event_id_type", "must be a string, an integer or a UUID")


def _validate_identifier(value: Any) -> Any:
    """Write a numeric id out; other values go on to the string schema.

    A whole float or `Decimal` is written as the integer it holds (`42.0`
    as `42`); one with a fraction is refused, since an id with a fraction
    is almost surely a bug.
    """
    if type(value) is str or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _id_text(value)
    if isinstance(value, _FRACTIONAL_TYPES):
        return _id_text(_whole_number(value))

    return value


def _id_text(value: int) -> str:
    try:
        return _integer_text(value)
    except UnusableValueError:
        pass

    raise _id_too_long()


def _id_too_long() -> PydanticCustomError:
    return _fail(
        "id_too_long", "is an integer of more than 64 digits; send it as a string"
    )


def _whole_number(value: float | Decimal) -> int:
    if isinstance(value, Decimal):
        # Checked before int(), which would write out all of 1E+999999999.
        if value.is_finite() and value.adjusted() >= _MAX_ID_DIGITS:
            raise _id_too_long()
        whole = value.is_finite() and value == value.to_integral_value()
    else:
        whole = math.isfinite(value) and value.is_integer()
    if not whole:
        raise _fail(
            "id_fraction",
            "is a number with a fraction or not finite; send ids as strings"
            " or whole numbers",
        )

    return int(value)


def _refuse_bool(value: Any) -> Any:
    """Refuse true and false where a number belongs; pydantic reads them as 1, 0."""
    if isinstance(value, bool):
        raise _fail("int_bool", "must be an integer, not true or false")

    return value


def _validate_money(value: Any) -> str:
    if isinstance(value, str):
        text = value.strip()
        if _PLAIN_DECIMAL.fullmatch(text):
            return text
        if not _DECIMAL_TEXT.fullmatch(text):
            raise _money_error()
        return _decimal_text(Decimal(text))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _money_error()
        text = format(value, _FLOAT_MONEY_FORMAT)
        if _PLAIN_DECIMAL.fullmatch(text):
            return text
        return _decimal_text(Decimal(text))
    if isinstance(value, bool):
        raise _money_error()
    if isinstance(value, int):
        return _decimal_text(Decimal(value))
    if isinstance(value, Decimal) and value.is_finite():
        return _decimal_text(value)

    raise _money_error()


def _decimal_text(number: Decimal) -> str:
    if number.adjusted() > _MONEY_MAX_ADJUSTED_EXPONENT:
        raise _fail("money_range", "is too large for an amount of money")
    if int(number.as_tuple().exponent) < -_MONEY_MAX_PLACES:
        number = number.quantize(_MONEY_QUANTUM, context=_MONEY_CONTEXT)

    return format(number, "f")


def _money_error() -> PydanticCustomError:
    return _fail("money", "must be a finite decimal number, such as 19.99 or '19.99'")


@cache
def _currency_codes() -> frozenset[str]:
    return frozenset(currency.alpha_3 for currency in pycountry.currencies)


@cache
def _language_codes() -> dict[str, str]:
    """Map ISO 639-1 codes to themselves, and other spellings to them.

    The other spellings are the 639-2 and 639-3 codes of a language that
    has a 639-1 code (`eng`, `ger`, `deu`) and the withdrawn 639-1 codes
    that Java still writes (`iw` for `he`).
    """
    codes = dict(_LEGACY_LANGUAGE_CODES)
    for language in pycountry.languages:
        alpha_2 = getattr(language, "alpha_2", None)
        if alpha_2 is None:
            continue
        codes[alpha_2] = alpha_2
        codes[language.alpha_3] = alpha_2
        bibliographic = getattr(language, "bibliographic", None)
        if bibliographic:
            codes[bibliographic] = alpha_2

    return codes


def _validate_currency(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail("currency_type", "must be a string")

    code = value.strip().upper()
    if code not in _currency_codes():
        raise _fail("currency", "must be an ISO 4217 currency code, such as USD")

    return code


def _validate_language(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail("language_type", "must be a string")

    match = _LANGUAGE_TAG.fullmatch(value.strip())
    code = _language_codes().get(match[1].lower()) if match else None
    if code is None:
        raise _fail(
            "language",
            "must be a language with an ISO 639-1 code, such as en or en-US;"
            " Pinterest takes no other",
        )

    return code


class _ParsedBy:
    """Annotation: one function reads the input, the field's type checks it.

    Unlike pydantic's `PlainValidator`, which wraps serialization in a
    Python call per value (costing more than the rest of `to_json`
    together), this keeps the type's native serializer and JSON schema.
    """

    __slots__ = ("_function",)

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function

    def __get_pydantic_core_schema__(
        self, source_type: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        schema = handler(source_type)
        if len(inspect.signature(self._function).parameters) == 2:
            return core_schema.with_info_before_validator_function(
                self._function, schema
            )

        return core_schema.no_info_before_validator_function(self._function, schema)


EventNameValue = Annotated[EventName | str, _ParsedBy(_validate_event_name)]
EventTime = Annotated[int, _ParsedBy(_validate_event_time)]
EventId = Annotated[str, _ParsedBy(_validate_event_id)]
# Product and order ids: strings, or numbers kept as their decimal text.
Identifier = Annotated[str, _ParsedBy(_validate_identifier)]
Money = Annotated[str, _ParsedBy(_validate_money)]
Currency = Annotated[str, _ParsedBy(_validate_currency)]
Language = Annotated[str, _ParsedBy(_validate_language)]
# Pinterest's schema gives install_time no upper bound; like event_time it is
# a Unix time, so it is held to int64 too rather than sent with any length.
InstallTime = Annotated[
    int, Field(ge=0, le=_INT64_MAX), _ParsedBy(_validate_install_time)
]
# JSON's true and false are no numbers, though pydantic would read them so.
Int64 = Annotated[int, Field(ge=_INT64_MIN, le=_INT64_MAX), _ParsedBy(_refuse_bool)]
ScreenPixels = Annotated[int, Field(ge=0, le=30720), _ParsedBy(_refuse_bool)]
StorageGigabytes = Annotated[int, Field(ge=0, le=1048576), _ParsedBy(_refuse_bool)]
BatteryPercent = Annotated[int, Field(ge=0, le=100), _ParsedBy(_refuse_bool)]
CPUCores = Annotated[int, Field(ge=0, le=1152), _ParsedBy(_refuse_bool)]
ScreenDensity = Annotated[int, Field(ge=0, le=100000), _ParsedBy(_refuse_bool)]
HashedValues = list[str]


# --- errors -------------------------------------------------------------------


def _field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """Translate pydantic's errors into ours, with paths and without inputs."""
    return [
        FieldError(_error_path(prefix, error["loc"]), _error_message(error))
        for error in exc.errors(include_url=False, include_input=False)
    ]


def _event_error(exc: ValidationError, prefix: str) -> EventValidationError:
    return EventValidationError(_field_errors(exc, prefix))


def _validated(
    call: Callable[..., _T], prefix: str, /, *args: Any, **kwargs: Any
) -> _T:
    """Return `call(...)`, turning pydantic's error into ours.

    Ours is raised outside the `except` block, so that it does not keep
    pydantic's error as its `__context__`: that error holds the input, raw
    personal data included, for any debugger or error tracker to find.
    """
    try:
        return call(*args, **kwargs)
    except ValidationError as exc:
        error = _event_error(exc, prefix)

    raise error


def _error_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    parts = [prefix] if prefix else []
    parts.extend(str(part) for part in loc)

    return ".".join(parts) or "event"


def _error_message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind.startswith(_OWN_ERROR_PREFIX):
        return error["msg"]

    template = _MESSAGES.get(kind)
    if template is not None:
        with contextlib.suppress(KeyError):  # a context key pydantic renamed
            return template.format_map(error.get("ctx") or {})

    return _FALLBACK_MESSAGE.format(type=kind)


def _prefix(path: str) -> str:
    return path.rstrip(".")


# --- models -------------------------------------------------------------------


class _Hidden:
    """Stands in for a value in `repr`: says that a field is set, not what."""

    __slots__ = ("_label",)

    def __init__(self, label: str) -> None:
        self._label = label

    def __repr__(self) -> str:
        return self._label


def _count_label(value: object) -> _Hidden:
    if isinstance(value, list):
        noun = "value" if len(value) == 1 else "values"
        return _Hidden(f"<{len(value)} {noun}>")

    return _Hidden("<set>")


class _WireModel(BaseModel):
    """Shared configuration and behaviour of every event model."""

    model_config = ConfigDict(
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        hide_input_in_errors=True,
        # A length bound, even this empty one, makes pydantic read every
        # string as UTF-8 while validating, which refuses a lone surrogate
        # (what JSON's "\ud800" decodes to) with a `string_unicode` error at
        # its path. Unbounded strings are not read, so such text would pass
        # validation and only fail in `to_json()`. The check runs in
        # pydantic's core and costs nothing measurable.
        str_min_length=0,
    )

    # Where a standalone model's error paths start (an event's are absolute).
    _error_root: ClassVar[str] = ""
    # Fields whose values `repr` hides, showing only that they are set.
    _hidden_fields: ClassVar[frozenset[str]] = frozenset()
    # Fields that hold a nested model (and a list of them, for contents).
    _model_fields: ClassVar[frozenset[str]] = frozenset()

    if not TYPE_CHECKING:
        # Hidden from type checkers so that the pydantic plugin keeps deriving
        # the typed keyword signature from the fields.

        def __init__(self, /, **data: Any) -> None:
            _validated(super().__init__, self._error_root, **data)

        # Marks this __init__ as pydantic's own (as RootModel does), so that
        # validating nested data never routes through it: it would lose the
        # validation context and turn nested errors into one opaque error.
        __init__.__pydantic_base_init__ = True

        @classmethod
        def model_validate(cls, *args: Any, **kwargs: Any) -> Self:
            return _validated(super().model_validate, cls._error_root, *args, **kwargs)

        @classmethod
        def model_validate_json(cls, *args: Any, **kwargs: Any) -> Self:
            validate = super().model_validate_json
            return _validated(validate, cls._error_root, *args, **kwargs)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if value is None:
                continue
            # A nested model hides its own fields. Anything else where a
            # model belongs came past validation (`model_construct`, or
            # `model_copy(update=...)`) and may hold raw personal data.
            if name in self._hidden_fields or (
                name in self._model_fields and not _is_model(value)
            ):
                yield name, _count_label(value)
            else:
                yield name, value


def _is_model(value: object) -> bool:
    """Tell whether `value` is a validated model, or a list of them only."""
    if isinstance(value, list):
        return all(isinstance(item, _WireModel) for item in value)

    return isinstance(value, _WireModel)


def _satisfies_matching_rule(fields: Mapping[str, object]) -> bool:
    if fields.get("em") or fields.get("hashed_maids"):
        return True

    return bool(fields.get("client_ip_address") and fields.get("client_user_agent"))


_MATCHING_FIELDS = frozenset(
    {"em", "hashed_maids", "client_ip_address", "client_user_agent"}
)


def _matching_rule_errors(warnings: Sequence[FieldWarning]) -> list[InitErrorDetails]:
    """The matching rule's error, then one for each value it could have used
    that was dropped, named by its path (`user_data.em.1`) and reason."""
    errors: list[InitErrorDetails] = [
        {
            "type": _fail("matching_rule", _MATCHING_RULE_MESSAGE),
            "loc": (),
            "input": None,
        }
    ]
    for warning in warnings:
        # Warning paths are `user_data.<key>` or `user_data.<key>.<index>`.
        loc = tuple(warning.path.split(".")[1:])
        if warning.dropped and loc and USER_DATA_KEYS.get(loc[0]) in _MATCHING_FIELDS:
            problem = _fail("dropped", "dropped: " + warning.reason)
            errors.append({"type": problem, "loc": loc, "input": None})

    return errors


def _line_errors(exc: ValidationError) -> list[InitErrorDetails]:
    """Pydantic's errors as our messages, to raise again with more of ours."""
    return [
        {
            "type": PydanticCustomError(
                _OWN_ERROR_PREFIX + "nested", _error_message(error)
            ),
            "loc": error["loc"],
            "input": None,
        }
        for error in exc.errors(include_url=False, include_input=False)
    ]


class UserData(_WireModel):
    """Who converted: normalized, hashed personal data and the unhashed ids.

    Accepts friendly names (`email`, `phone`, `first_name`, `last_name`,
    `gender`, `date_of_birth`, `city`, `state`, `zip_code`, `country`,
    `external_id`, `hashed_maids`, `client_ip_address`, `client_user_agent`,
    `click_id`, `partner_id`) or Pinterest's codes (`em`, `ph`, `fn`, `ln`,
    `ge`, `db`, `ct`, `st`, `zp`, ...), each personal field as one value or a
    list, raw or already hashed. The validation context may carry
    `default_region` (for phone numbers without a country code) and
    `date_format` (for ambiguous birth dates).

    Pinterest needs `em`, or `hashed_maids`, or both `client_ip_address` and
    `client_user_agent`; the rule is checked after normalization, so an
    email that was dropped as unusable does not count. The error then
    names each such dropped value beside `user_data`, with its reason
    (`user_data.em: dropped: not an email address ...`).

    Privacy: every personal field is normalized and SHA-256 hashed during
    validation; the model holds only lists of 64-character lowercase hex
    digests for them. `client_ip_address`, `client_user_agent`, `click_id`
    and `partner_id` are kept as given (the IP address validated), because
    Pinterest matches on them unhashed. Unusable values are dropped and
    listed in `warnings` by path and reason, never by value. `repr` and
    `str` show which fields are set and how many values each holds, never
    the values or their hashes.
    """

    _error_root: ClassVar[str] = "user_data"

    email: HashedValues | None = Field(None, alias="em")
    phone: HashedValues | None = Field(None, alias="ph")
    first_name: HashedValues | None = Field(None, alias="fn")
    last_name: HashedValues | None = Field(None, alias="ln")
    gender: HashedValues | None = Field(None, alias="ge")
    date_of_birth: HashedValues | None = Field(None, alias="db")
    city: HashedValues | None = Field(None, alias="ct")
    state: HashedValues | None = Field(None, alias="st")
    zip_code: HashedValues | None = Field(None, alias="zp")
    country: HashedValues | None = None
    external_id: HashedValues | None = None
    hashed_maids: HashedValues | None = None
    client_ip_address: str | None = None
    client_user_agent: str | None = None
    click_id: str | None = None
    partner_id: str | None = None

    # Slots rather than pydantic private attributes: those cost a Python
    # call per instance to initialize, a tenth of a whole event's validation.
    # The copy and pickle hooks below carry `_dropped` along. `_digests` is
    # what validation put in the hashed fields, a copy kept to tell cheaply
    # that nothing has changed them since (see `_check_validated`); copies
    # of the model go without it and are checked in full instead.
    __slots__ = ("_digests", "_dropped")

    @model_validator(mode="wrap")
    @classmethod
    def _normalize_and_hash(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        if not isinstance(data, Mapping):
            return handler(data)

        context = info.context or {}
        rules = context.get(_RULES_KEY)
        if rules is None:
            rules = _rules_of(context)
        hashed = _hash_with_rules(data, rules)
        fields = hashed.fields
        problems = []
        if not _satisfies_matching_rule(fields):
            problems = _matching_rule_errors(hashed.warnings)

        try:
            user_data = handler(fields)
        except ValidationError as exc:
            if not problems:
                raise
            problems = _line_errors(exc) + problems
        else:
            if not problems:
                object.__setattr__(user_data, "_dropped", hashed.warnings)
                # The hasher's lists: pydantic validated copies of them.
                digests = _WIRE_VALUES(_NO_DIGESTS | fields)
                object.__setattr__(user_data, "_digests", digests)
                return user_data

        raise ValidationError.from_exception_data(
            cls.__name__, problems, hide_input=True
        )

    @property
    def warnings(self) -> tuple[FieldWarning, ...]:
        """Personal-data values dropped as unusable: path and reason each.

        A phone number hashed without a known country code is listed too,
        with `dropped` false (see `FieldWarning`).
        """
        warnings: tuple[FieldWarning, ...] = getattr(self, "_dropped", ())
        return warnings

    def __copy__(self) -> Self:
        duplicate = super().__copy__()
        object.__setattr__(duplicate, "_dropped", self.warnings)
        return duplicate

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        duplicate = super().__deepcopy__(memo)
        object.__setattr__(duplicate, "_dropped", self.warnings)
        return duplicate

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["_dropped"] = self.warnings
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        object.__setattr__(self, "_dropped", state.get("_dropped", ()))

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super(_WireModel, self).__repr_args__():
            if value is not None:
                yield name, _count_label(value)


class ContentItem(_WireModel):
    """One line item of `custom_data.contents`.

    `id` takes a string or an integer (kept as its decimal string);
    `item_price` is the unit price before discounts, as for
    `CustomData.value`. Nothing here is hashed; it is product data.
    """

    _error_root: ClassVar[str] = "content"

    id: Identifier | None = None
    item_price: Money | None = None
    quantity: Int64 | None = None
    item_name: str | None = None
    item_category: str | None = None
    item_brand: str | None = None


class CustomData(_WireModel):
    """What was converted: value, currency, products, order and search.

    Money (`value`, `predicted_ltv`, and each item's `item_price`) is sent as
    a decimal string: strings, integers and `Decimal`s keep their digits, a
    float is read at 15 significant digits, so `0.1 + 0.2` becomes `"0.3"`;
    NaN, infinities and non-numbers are errors. `currency` is an ISO 4217
    code, uppercased. `named_partner` is Pinterest's `np`, which Pinterest
    asks to send only when told to.

    Privacy: nothing here is hashed. `search_string` may hold what a person
    typed, so `repr` hides its value.
    """

    _error_root: ClassVar[str] = "custom_data"
    _hidden_fields: ClassVar[frozenset[str]] = frozenset({"search_string"})
    _model_fields: ClassVar[frozenset[str]] = frozenset({"contents"})

    currency: Currency | None = None
    value: Money | None = None
    content_ids: list[Identifier] | None = None
    contents: list[ContentItem] | None = None
    num_items: Int64 | None = None
    order_id: Identifier | None = None
    search_string: str | None = None
    opt_out_type: str | None = None
    named_partner: str | None = Field(None, alias="np")
    content_name: str | None = None
    content_category: str | None = None
    content_brand: str | None = None
    external_measurement_id: str | None = None
    external_measurement_vendor_id: Int64 | None = None
    predicted_ltv: Money | None = None


class AppInfo(_WireModel):
    """The app an event came from (structured form, API 5.16 and later).

    `install_time` takes the same forms as `Event.event_time` without the
    7-day window. Privacy: `user_agent` is never shown by `repr`.
    """

    _error_root: ClassVar[str] = "app_info"
    _hidden_fields: ClassVar[frozenset[str]] = frozenset({"user_agent"})

    app_id: str | None = Field(None, max_length=200)
    app_name: str | None = Field(None, max_length=200)
    app_package_name: str | None = Field(None, max_length=200)
    app_store: str | None = Field(None, max_length=100)
    app_version: str | None = Field(None, max_length=100)
    install_time: InstallTime | None = None
    user_agent: str | None = Field(None, max_length=16384)
    window_height: ScreenPixels | None = None
    window_width: ScreenPixels | None = None


class DeviceInfo(_WireModel):
    """The device an event came from (structured form, API 5.16 and later).

    `device_type` is Pinterest's `type`. `languages` takes ISO 639-1 codes
    or language tags (`en-US` becomes `en`). Storage sizes are in gigabytes.
    """

    _error_root: ClassVar[str] = "device_info"

    battery_level: BatteryPercent | None = None
    brand: str | None = Field(None, max_length=100)
    carrier: str | None = Field(None, max_length=100)
    cpu_cores: CPUCores | None = None
    external_storage_free_space: StorageGigabytes | None = None
    external_storage_size: StorageGigabytes | None = None
    form_factor: FormFactor | None = None
    kernel_version: str | None = Field(None, max_length=100)
    languages: list[Language] | None = Field(None, max_length=100)
    locale: str | None = Field(None, max_length=35)
    model: str | None = Field(None, max_length=100)
    network_type: NetworkType | None = None
    os_family: OSFamily | None = None
    os_name: str | None = Field(None, max_length=100)
    os_release_name: str | None = Field(None, max_length=100)
    os_version: str | None = Field(None, max_length=100)
    screen_density: ScreenDensity | None = None
    screen_height: ScreenPixels | None = None
    screen_width: ScreenPixels | None = None
    storage_free_space: StorageGigabytes | None = None
    storage_size: StorageGigabytes | None = None
    timezone: str | None = Field(None, max_length=40)
    timezone_abbr: str | None = Field(None, max_length=5)
    device_type: str | None = Field(None, max_length=100, alias="type")


class Event(_WireModel):
    """One conversion, validated and ready to send.

    Build one with `build_event` / `Event.build` or read one with
    `parse_event`; constructing it directly works too, and raises
    `EventValidationError` listing every problem with its field path.

    - `event_name`: an `EventName` or an advertiser-defined name of letters
      and underscores; `action_source`: an `ActionSource`. Plain strings
      are accepted for both.
    - `event_time`: Unix seconds; also milliseconds (13 digits), numeric
      strings, ISO 8601 strings with an offset, and datetimes (naive ones
      are UTC). Must lie between 7 days ago and 5 minutes ahead; the
      validation context key `now` replaces the clock. Defaults to now.
    - `event_id`: kept byte for byte (an integer becomes its decimal
      string); defaults to a fresh UUID4, generated once, so retries of this
      event reuse it and Pinterest can deduplicate.
    - `language`: a language with an ISO 639-1 code, sent as that code:
      `en-US` and `eng` become `en`, and the withdrawn `iw`, `in` and `ji`
      (which Java and older Android write) become `he`, `id` and `yi`. A
      language without a two-letter code (`fil`, `yue`) is an error, as
      Pinterest takes no other; leave the field out for it.
    - Product and order ids (`content_ids`, `contents[].id`, `order_id`)
      take strings, and numbers written as their integer text: `42.0`
      becomes `"42"`, `1e20` becomes `"100000000000000000000"` (a float
      above 2**53 holds only the nearest id it can: pass large ids as
      strings). A number with a fraction is an error.
    - Counts and sizes (`num_items`, `quantity`, `device_info`'s numbers,
      ...) take integers, and refuse `true` and `false`.

    Privacy: `user_data` is hashed while the event is validated (see
    `UserData`). `repr` and `str` never show user data, the page URL or the
    search string; they say which of those fields are set. An event that
    skipped validation (`model_construct()`, `model_copy(update=...)`) and
    holds anything but digests in a hashed field, or a mapping where a
    nested model belongs, is refused by `to_json()`, `to_wire()` and
    `model_dump()` with an `EventValidationError` naming the field, so raw
    personal data never reaches Pinterest through them.
    """

    _hidden_fields: ClassVar[frozenset[str]] = frozenset({"event_source_url"})
    _model_fields: ClassVar[frozenset[str]] = frozenset(
        {"user_data", "custom_data", "app_info", "device_info"}
    )

    event_name: EventNameValue
    action_source: ActionSource
    event_time: EventTime = Field(default_factory=_now_seconds)
    event_id: EventId = Field(default_factory=_new_event_id)
    user_data: UserData
    custom_data: CustomData | None = None
    event_source_url: str | None = None
    opt_out: bool | None = None
    partner_name: str | None = None
    app_id: str | None = None
    app_name: str | None = None
    app_version: str | None = None
    app_info: AppInfo | None = None
    device_brand: str | None = None
    device_carrier: str | None = None
    device_model: str | None = None
    device_type: str | None = None
    os_version: str | None = None
    device_info: DeviceInfo | None = None
    wifi: bool | None = None
    language: Language | None = None

    @classmethod
    def build(
        cls,
        event_name: EventName | str,
        action_source: ActionSource | str = ActionSource.WEB,
        user_data: UserData | Mapping[str, Any] | None = None,
        custom_data: CustomData | Mapping[str, Any] | None = None,
        *,
        event_id: str | int | None = None,
        event_time: int | float | str | datetime | None = None,
        default_region: str | None = None,
        date_format: str | None = None,
        **fields: Any,
    ) -> Event:
        """Build an event in one call; the same as `build_event`."""
        return build_event(
            event_name,
            action_source,
            user_data,
            custom_data,
            event_id=event_id,
            event_time=event_time,
            default_region=default_region,
            date_format=date_format,
            **fields,
        )

    @property
    def warnings(self) -> tuple[FieldWarning, ...]:
        """What to know about the values of this event: path and reason each.

        Paths start at the event (`user_data.ph`, `user_data.em.1`). Most
        are values dropped as unusable: a dropped value never fails the
        event; it only weakens matching. Two kinds are sent as they are,
        with `dropped` false: a phone number hashed without a known country
        code (set `default_region` to read it correctly), and an
        `event_name` that is a standard name in other letter case
        (`Checkout`), which Pinterest counts as an advertiser-defined event.
        """
        dropped: tuple[FieldWarning, ...] = getattr(self.user_data, "warnings", ())
        name_warning = _event_name_warning(self.event_name)
        if name_warning is None:
            return dropped

        return (name_warning, *dropped)

    if not TYPE_CHECKING:
        # Hidden from type checkers, which would want pydantic's full
        # signatures repeated here.

        def model_dump(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            _check_validated(self)
            return super().model_dump(*args, **kwargs)

        def model_dump_json(self, *args: Any, **kwargs: Any) -> str:
            _check_validated(self)
            return super().model_dump_json(*args, **kwargs)

    def to_wire(self) -> dict[str, Any]:
        """The event as Pinterest's JSON object, in Python types.

        Wire codes as keys; absent (`None`) fields are left out, while `0`,
        `False` and `"0"` are kept. Raises `EventValidationError` for an
        event that skipped validation and holds raw data (see `Event`).
        """
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_json(self) -> bytes:
        """The event as compact UTF-8 JSON: `to_wire()`, serialized.

        Raises `EventValidationError` for an event that skipped validation
        and holds raw data (see `Event`).
        """
        _check_validated(self)
        return self.__pydantic_serializer__.to_json(
            self, by_alias=True, exclude_none=True
        )

    def to_wire_event(self) -> WireEvent:
        """The event serialized once, with the ids the delivery path needs."""
        return WireEvent(self.event_id, str(self.event_name), self.to_json())


# --- the check before serializing ---------------------------------------------

_SKIPPED_VALIDATION = (
    "it was built or changed without validation (model_construct,"
    " model_copy with update, assignment), so the event is not serialized"
)
_NOT_DIGESTS = (
    "holds a value that is not a SHA-256 digest (64 lowercase hex characters);"
    f" {_SKIPPED_VALIDATION}"
)
_NOT_A_MODEL = f"is not a validated model; {_SKIPPED_VALIDATION}"
_CONTENTS = "custom_data.contents"
_HASHED_VALUES = operator.itemgetter(*HASHED_FIELDS)
_WIRE_CODES = tuple(HASHED_FIELDS.values())
_WIRE_VALUES = operator.itemgetter(*_WIRE_CODES)
_NO_DIGESTS = dict.fromkeys(_WIRE_CODES)
_HEX_DIGITS = b"0123456789abcdef"
_DIGEST_LENGTH = {64}


def _check_validated(event: Event) -> None:
    """Refuse an event that holds what validation would not have let in.

    `model_construct()`, `model_copy(update=...)`, assignment and changing
    a list in place all skip validation, and could put a raw email on the
    wire. The check runs for every event sent, so its common path is a
    comparison and a few type checks: a fifth of the serialization's cost.
    """
    values = event.__dict__
    user_data = values.get("user_data")
    if isinstance(user_data, UserData) and _holds_validated_digests(user_data):
        field = _unvalidated_model(values)
        if field is None:
            return
        error = FieldError(field, _NOT_A_MODEL)
    else:
        error = _unvalidated_user_data(user_data)

    raise EventValidationError([error])


def _holds_validated_digests(user_data: UserData) -> bool:
    """Whether the hashed fields hold digests only.

    Values equal to what validation produced are: comparing them with the
    copy kept then is all the common path does. Anything else (a model
    built by `model_construct`, or changed since) is checked in full.
    """
    fields = _HASHED_VALUES(user_data.__dict__)
    if fields == getattr(user_data, "_digests", None):
        return True

    return _holds_only_digests(fields)


def _holds_only_digests(fields: Iterable[Any]) -> bool:
    """Whether every field is absent or a list of lowercase SHA-256 digests.

    The digests of every field are checked together, by calls that each
    loop in C.
    """
    digests: list[Any] = []
    for field in fields:
        if field is not None:
            if type(field) is not list:
                return False
            digests += field
    try:
        if set(map(len, digests)) != _DIGEST_LENGTH:
            return not digests  # No digests at all is fine.
        # Deleting the hex digits leaves nothing of text made of them only.
        return not "".join(digests).encode().translate(None, _HEX_DIGITS)
    except (TypeError, UnicodeError):
        return False


def _unvalidated_model(values: Mapping[str, Any]) -> str | None:
    """The first nested object put in place of its model (a mapping), or None."""
    # Checks spelled out rather than a loop over the models: this runs for
    # every event serialized.
    custom_data = values.get("custom_data")
    if custom_data is not None and not isinstance(custom_data, CustomData):
        return "custom_data"
    app_info = values.get("app_info")
    if app_info is not None and not isinstance(app_info, AppInfo):
        return "app_info"
    device_info = values.get("device_info")
    if device_info is not None and not isinstance(device_info, DeviceInfo):
        return "device_info"
    contents = None if custom_data is None else custom_data.contents
    if contents is None:
        return None
    if type(contents) is not list:
        return _CONTENTS
    # A loop, not all(): a generator costs more than the few items it checks.
    for item in contents:
        if not isinstance(item, ContentItem):
            return _CONTENTS

    return None


def _unvalidated_user_data(user_data: Any) -> FieldError:
    """Name what `_check_validated` refused in `user_data` (the slow path)."""
    if not isinstance(user_data, UserData):
        return FieldError("user_data", _NOT_A_MODEL)
    for wire, field in zip(
        _WIRE_CODES, _HASHED_VALUES(user_data.__dict__), strict=True
    ):
        if not _holds_only_digests((field,)):
            return FieldError(f"user_data.{wire}", _NOT_DIGESTS)

    # The loop finds the field whenever `_holds_validated_digests` refused.
    return FieldError("user_data", _NOT_DIGESTS)  # pragma: no cover - see above


def batch_body(payloads: Iterable[bytes]) -> bytes:
    """Join serialized events into one request body: `{"data":[...]}`.

    The payloads are taken as they are (see `Event.to_json`); Pinterest
    accepts 1 to 1000 events per request and the caller keeps to that.
    """
    return b'{"data":[' + b",".join(payloads) + b"]}"


# The hasher's rules in a validation context built by `_context`: its options
# are checked once there, not again for each event.
_RULES_KEY = "_pinterest_mw_rules"


def _context(
    default_region: str | None, date_format: str | None, now: datetime | float | None
) -> dict[str, Any]:
    """The validation context; raises for unusable options before any event."""
    if date_format is not None and not isinstance(date_format, str):
        raise ConfigurationError("date_format must be a strptime format string")

    return {
        "default_region": default_region,
        "date_format": date_format,
        "now": now,
        _RULES_KEY: _rules(default_region, date_format),
    }


def _rules_of(context: Mapping[str, Any]) -> Mapping[str, Callable[[str], str]]:
    """The hasher's rules for a context of the caller's own (`model_validate`)."""
    try:
        return _rules(context.get("default_region"), context.get("date_format"))
    except ConfigurationError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(str(exc)) from exc


def parse_event(
    data: Mapping[str, Any],
    *,
    default_region: str | None = None,
    date_format: str | None = None,
    now: datetime | float | None = None,
    path: str = "",
) -> Event:
    """Validate one event given as a mapping (friendly names or wire codes).

    Args:
        data: the event, as decoded JSON or built by code.
        default_region: the region (such as `"US"`) assumed for phone
            numbers written without a country code.
        date_format: a `strptime` format for birth dates in an ambiguous
            form such as `03/04/1997`.
        now: the clock for the `event_time` window; defaults to the time of
            the call.
        path: prefixed to every error path, such as `"data.3"`.

    Raises:
        EventValidationError: listing every problem, each with its path.
            Messages never repeat an input value, the event name included.
        ConfigurationError: `default_region` or `date_format` is unusable
            (see `hash_user_data`), checked before any event is read.
    """
    context = _context(default_region, date_format, now)
    # Inline rather than through `_validated`: this is the hot path.
    try:
        event: Event = Event.__pydantic_validator__.validate_python(
            data, context=context
        )
    except ValidationError as exc:
        error = _event_error(exc, _prefix(path))
    else:
        return event

    raise error


def parse_events(
    items: Sequence[Mapping[str, Any]],
    *,
    default_region: str | None = None,
    date_format: str | None = None,
    now: datetime | float | None = None,
    path: str = "data",
) -> list[Event]:
    """Validate a list of events, reporting the problems of all of them.

    Error paths start with `path` and the item's index (`data.3.event_time`).
    Other arguments as for `parse_event`.

    Raises:
        EventValidationError: when any item is invalid; no event is returned
            then.
        ConfigurationError: as for `parse_event`.
    """
    context = _context(default_region, date_format, now)
    validate = Event.__pydantic_validator__.validate_python
    base = _prefix(path)
    events: list[Event] = []
    errors: list[FieldError] = []
    for index, item in enumerate(items):
        try:
            events.append(validate(item, context=context))
        except ValidationError as exc:
            item_path = f"{base}.{index}" if base else str(index)
            errors.extend(_field_errors(exc, item_path))

    if errors:
        raise EventValidationError(errors)

    return events


def build_event(
    event_name: EventName | str,
    action_source: ActionSource | str = ActionSource.WEB,
    user_data: UserData | Mapping[str, Any] | None = None,
    custom_data: CustomData | Mapping[str, Any] | None = None,
    *,
    event_id: str | int | None = None,
    event_time: int | float | str | datetime | None = None,
    default_region: str | None = None,
    date_format: str | None = None,
    **fields: Any,
) -> Event:
    """Build and validate an event in one call.

    `event_time` defaults to now and `event_id` to a fresh UUID4, both fixed
    at this call. Further event fields (`event_source_url`, `language`,
    `app_info`, ...) go in `fields`.

    ```python
    event = build_event(
        "checkout",
        user_data={"email": "Ann@Example.com", "client_ip_address": ip},
        custom_data={"value": 19.99, "currency": "usd"},
    )
    ```

    Privacy: personal data in `user_data` is hashed before this returns;
    unusable values are dropped and listed in `Event.warnings`.

    Raises:
        EventValidationError: listing every problem, each with its path.
        ConfigurationError: `default_region` or `date_format` is unusable.
    """
    data: dict[str, Any] = {
        **fields,
        "event_name": event_name,
        "action_source": action_source,
        "user_data": {} if user_data is None else user_data,
    }
    if custom_data is not None:
        data["custom_data"] = custom_data
    if event_id is not None:
        data["event_id"] = event_id
    if event_time is not None:
        data["event_time"] = event_time

    return parse_event(data, default_region=default_region, date_format=date_format)
