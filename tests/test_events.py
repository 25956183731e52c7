"""The event model, its validation, serialization and builder."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import pickle
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from _helpers import HUGE, HugeInt
from hypothesis import given, settings
from hypothesis import strategies as st

from pinterest_mw import hashing
from pinterest_mw.events import (
    ActionSource,
    AppInfo,
    ContentItem,
    CustomData,
    DeviceInfo,
    Event,
    EventName,
    FormFactor,
    NetworkType,
    OSFamily,
    UserData,
    WireEvent,
    batch_body,
    build_event,
    parse_event,
    parse_events,
)
from pinterest_mw.exceptions import ConfigurationError, EventValidationError, FieldError

NOW = 1_700_000_000
DAY = 24 * 3600
EMAIL = "Ann.Smith+shop@Example.com"
EMAIL_HASH = hashlib.sha256(b"ann.smith+shop@example.com").hexdigest()
IP = "203.0.113.7"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
MAID_HASH = hashlib.sha256(b"6d92078a-8246-4ba4-ae5b-76104861e7dc").hexdigest()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def event_data(**overrides: Any) -> dict[str, Any]:
    """A valid web checkout as a mapping; `overrides` replace its keys."""
    data: dict[str, Any] = {
        "event_name": "checkout",
        "action_source": "web",
        "event_time": NOW,
        "event_id": "order-1001",
        "user_data": {"email": EMAIL},
    }
    data.update(overrides)
    return data


def parse(**overrides: Any) -> Event:
    return parse_event(event_data(**overrides), now=NOW)


def errors_of(**overrides: Any) -> list[FieldError]:
    with pytest.raises(EventValidationError) as caught:
        parse(**overrides)
    return caught.value.errors


def paths_of(**overrides: Any) -> list[str]:
    return [error.path for error in errors_of(**overrides)]


# --- builder ---


def test_build_event_defaults_event_time_to_now():
    before = int(time.time())
    event = build_event("checkout", user_data={"email": EMAIL})
    after = int(time.time())

    assert before <= event.event_time <= after


def test_build_event_defaults_action_source_to_web():
    event = build_event("checkout", user_data={"email": EMAIL})

    assert event.action_source is ActionSource.WEB


def test_build_event_generates_a_uuid4_event_id():
    event = build_event("checkout", user_data={"email": EMAIL})

    assert uuid.UUID(event.event_id).version == 4


def test_build_event_generates_a_fresh_event_id_per_event():
    first = build_event("checkout", user_data={"email": EMAIL})
    second = build_event("checkout", user_data={"email": EMAIL})

    assert first.event_id != second.event_id


def test_event_id_stays_the_same_across_serializations():
    """A generated id is fixed at build time, so every retry sends the same one."""
    event = build_event("checkout", user_data={"email": EMAIL})

    ids = {
        event.event_id,
        event.to_wire()["event_id"],
        json.loads(event.to_json())["event_id"],
        event.to_wire_event().event_id,
        event.to_wire_event().event_id,
    }

    assert len(ids) == 1


def test_build_event_takes_user_data_custom_data_and_extra_fields():
    event = build_event(
        "add_to_cart",
        "app_ios",
        {"email": EMAIL},
        {"value": 19.99, "currency": "usd"},
        event_id="cart-7",
        event_time=f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}Z",
        language="en-GB",
        wifi=True,
    )

    assert event.to_wire() | {"event_time": 0} == {
        "event_name": "add_to_cart",
        "action_source": "app_ios",
        "event_time": 0,
        "event_id": "cart-7",
        "user_data": {"em": [EMAIL_HASH]},
        "custom_data": {"value": "19.99", "currency": "USD"},
        "language": "en",
        "wifi": True,
    }


def test_event_build_classmethod_is_build_event():
    event = Event.build("lead", user_data={"email": EMAIL}, event_id="lead-1")

    assert (event.event_name, event.event_id) == (EventName.LEAD, "lead-1")


def test_build_event_accepts_a_user_data_model():
    user_data = UserData(email=EMAIL)

    event = build_event("checkout", user_data=user_data)

    assert event.user_data.email == [EMAIL_HASH]


def test_build_event_raises_event_validation_error():
    with pytest.raises(EventValidationError) as caught:
        build_event("checkout", user_data={"phone": "+1 415 555 0100"})

    assert [error.path for error in caught.value.errors] == ["user_data"]


def test_unknown_default_region_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        build_event("checkout", user_data={"email": EMAIL}, default_region="XX")


PARSERS = {
    "parse_event": lambda **options: parse_event(event_data(), now=NOW, **options),
    "parse_events": lambda **options: parse_events([event_data()], now=NOW, **options),
    "build_event": lambda **options: build_event(
        "checkout", user_data={"email": EMAIL}, **options
    ),
}


@pytest.mark.parametrize("parser", PARSERS.values(), ids=PARSERS.keys())
@pytest.mark.parametrize("date_format", ["%Q/%m/%Y", "%d/%m", 7])
def test_an_unusable_date_format_is_a_configuration_error_before_any_event(
    parser, date_format
):
    """Even an event without a birth date fails: every date would be lost (#2)."""
    with pytest.raises(ConfigurationError, match=r"^date_format must be"):
        parser(date_format=date_format)


@pytest.mark.parametrize("parser", PARSERS.values(), ids=PARSERS.keys())
def test_an_unknown_region_is_a_configuration_error_before_any_event(parser):
    with pytest.raises(ConfigurationError, match=r"^default_region must be"):
        parser(default_region="XX")


def test_phone_without_country_code_is_sent_with_a_warning():
    """Without a default region the digits are a guess the caller must see."""
    event = parse(user_data={"email": EMAIL, "phone": "(415) 555-0100"})

    assert event.user_data.phone == [sha("4155550100")]
    assert [(w.path, w.dropped) for w in event.warnings] == [("user_data.phone", False)]


def test_the_region_is_checked_once_for_a_whole_list(monkeypatch):
    """Not again by the hasher for each event: the options came in once."""
    checked: list[object] = []
    check = hashing.check_default_region

    def counted(region: object) -> str | None:
        checked.append(region)
        return check(region)

    monkeypatch.setattr(hashing, "check_default_region", counted)
    items = [event_data(user_data={"email": EMAIL, "phone": "(415) 555-0100"})] * 3

    events = parse_events(items, now=NOW, default_region="US")

    assert [event.user_data.phone for event in events] == [[sha("14155550100")]] * 3
    assert checked == ["US"]


def test_a_context_of_the_callers_own_is_checked_too():
    """`model_validate` with a context `parse_event` did not build."""
    with pytest.raises(ConfigurationError, match=r"^default_region must be"):
        UserData.model_validate({"email": EMAIL}, context={"default_region": "XX"})


def test_build_event_passes_default_region_to_the_hasher():
    event = build_event(
        "checkout",
        user_data={"email": EMAIL, "phone": "(415) 555-0100"},
        default_region="US",
    )

    assert event.user_data.phone == [sha("14155550100")]


# --- event_time ---


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(NOW, id="int-seconds"),
        pytest.param(NOW + 0.75, id="float-seconds"),
        pytest.param(NOW * 1000 + 999, id="int-milliseconds"),
        pytest.param(float(NOW * 1000), id="float-milliseconds"),
        pytest.param(Decimal(NOW), id="decimal-seconds"),
        pytest.param(str(NOW), id="numeric-string"),
        pytest.param(f" {NOW}.5 ", id="numeric-string-with-fraction"),
        pytest.param(str(NOW * 1000), id="millisecond-string"),
        pytest.param("2023-11-14T22:13:20Z", id="iso-z"),
        pytest.param("2023-11-14T23:13:20.250+01:00", id="iso-offset"),
        pytest.param(datetime.fromtimestamp(NOW, UTC), id="aware-datetime"),
        pytest.param(
            datetime.fromtimestamp(NOW, timezone(timedelta(hours=-5))),
            id="aware-datetime-other-zone",
        ),
        pytest.param(datetime(2023, 11, 14, 22, 13, 20), id="naive-datetime-is-utc"),
    ],
)
def test_event_time_forms_become_unix_seconds(value):
    assert parse(event_time=value).event_time == NOW


@pytest.mark.parametrize(
    "offset",
    [
        pytest.param(-7 * DAY, id="exactly-7-days-ago"),
        pytest.param(0, id="now"),
        pytest.param(300, id="exactly-5-minutes-ahead"),
    ],
)
def test_event_time_inside_the_window_is_accepted(offset):
    assert parse(event_time=NOW + offset).event_time == NOW + offset


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        pytest.param(-7 * DAY - 1, "is more than 7 days in the past", id="too-old"),
        pytest.param(301, "is more than 5 minutes in the future", id="too-new"),
    ],
)
def test_event_time_outside_the_window_is_an_error(offset, message):
    assert errors_of(event_time=NOW + offset) == [FieldError("event_time", message)]


def test_event_time_window_uses_the_injected_clock():
    """`now` in the validation context replaces the wall clock."""
    event = Event.model_validate(event_data(), context={"now": NOW})

    assert event.event_time == NOW


def test_event_time_window_accepts_a_datetime_as_now():
    now = datetime.fromtimestamp(NOW, UTC)

    assert parse_event(event_data(), now=now).event_time == NOW


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("yesterday", id="words"),
        pytest.param("2023-11-14T22:13:20", id="iso-without-offset"),
        pytest.param(True, id="bool"),
        pytest.param(float("nan"), id="nan"),
        pytest.param([NOW], id="list"),
        pytest.param(datetime(2023, 11, 14).date(), id="date-without-time"),
        pytest.param("9" * 5000, id="endless-digits"),
        pytest.param(Decimal("sNaN"), id="signalling-nan"),
    ],
)
def test_unreadable_event_time_is_an_error(value):
    assert paths_of(event_time=value) == ["event_time"]


def test_missing_event_time_defaults_to_now():
    data = event_data()
    del data["event_time"]
    before = int(time.time())

    event = parse_event(data)

    assert before <= event.event_time <= int(time.time())


# --- event_id ---


@pytest.mark.parametrize(
    "value",
    [" order 1 ", "0", "Ünïcode-ïd", "a" * 300, "550E8400-E29B-41D4-A716-446655440000"],
)
def test_event_id_is_kept_byte_for_byte(value):
    event = parse(event_id=value)

    assert event.event_id == value
    assert json.loads(event.to_json())["event_id"] == value


def test_integer_event_id_becomes_its_decimal_string():
    assert parse(event_id=12345678901234567890).event_id == "12345678901234567890"


def test_uuid_event_id_becomes_its_string():
    value = uuid.uuid4()

    assert parse(event_id=value).event_id == str(value)


@pytest.mark.parametrize("value", ["", "   ", "\t\n", True, 1.5, b"bytes"])
def test_unusable_event_id_is_an_error(value):
    assert paths_of(event_id=value) == ["event_id"]


def test_missing_event_id_is_generated():
    data = event_data()
    del data["event_id"]

    assert uuid.UUID(parse_event(data, now=NOW).event_id).version == 4


# --- event_name and action_source ---


@pytest.mark.parametrize("name", [member.value for member in EventName])
def test_standard_event_names_become_the_enum(name):
    assert parse(event_name=name).event_name is EventName(name)


@pytest.mark.parametrize("name", ["Newsletter_Signup", "quiz_done", "ADE"])
def test_advertiser_defined_event_names_are_kept(name):
    event = parse(event_name=name)

    assert (event.event_name, event.to_wire()["event_name"]) == (name, name)


@pytest.mark.parametrize(
    "name", ["add-to-cart", "checkout2", "", "view content", "jane.doe@example.com"]
)
def test_other_event_names_are_an_error_that_does_not_repeat_the_value(name):
    """A shifted column can put personal data in the event name (#2)."""
    assert errors_of(event_name=name) == [
        FieldError(
            "event_name",
            "is neither a standard event name nor an advertiser-defined name of"
            " letters and underscores",
        )
    ]


@pytest.mark.parametrize("name", ["Checkout", "CHECKOUT", "Add_To_Cart"])
def test_a_standard_name_in_other_case_is_sent_as_given_with_a_warning(name):
    """Pinterest counts `Checkout` as an advertiser-defined event (#2)."""
    event = parse(event_name=name)

    assert event.to_wire()["event_name"] == name
    [warning] = event.warnings
    assert (warning.path, warning.dropped) == ("event_name", False)
    assert f"'{name.lower()}'" in warning.reason
    assert "lower-case" in warning.reason


@pytest.mark.parametrize("name", ["checkout", "Newsletter_Signup", "quiz_done"])
def test_standard_and_advertiser_names_get_no_warning(name):
    assert parse(event_name=name).warnings == ()


def test_the_event_name_warning_comes_before_dropped_values():
    event = parse(event_name="Lead", user_data={"email": EMAIL, "gender": "robot"})

    assert [w.path for w in event.warnings] == ["event_name", "user_data.gender"]


def test_event_name_must_be_a_string():
    assert errors_of(event_name=7) == [FieldError("event_name", "must be a string")]


@pytest.mark.parametrize("source", ["web", "app_android", "app_ios", "offline"])
def test_action_source_accepts_plain_strings(source):
    assert parse(action_source=source).action_source is ActionSource(source)


def test_unknown_action_source_lists_the_allowed_values():
    [error] = errors_of(action_source="email")

    assert error == FieldError(
        "action_source",
        "must be one of 'web', 'app_android', 'app_ios' or 'offline'",
    )


# --- money, currency, language ---


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(0.1 + 0.2, "0.3", id="float-sum"),
        pytest.param(19.99, "19.99", id="float"),
        pytest.param(1e16, "10000000000000000", id="large-float"),
        pytest.param(Decimal("19.990"), "19.990", id="decimal-keeps-digits"),
        pytest.param(Decimal("1E+2"), "100", id="decimal-exponent"),
        pytest.param("19.99", "19.99", id="string"),
        pytest.param(" 72.39 ", "72.39", id="string-padded"),
        pytest.param("-3.50", "-3.50", id="negative-string"),
        pytest.param("2.5e1", "25", id="string-exponent"),
        pytest.param(20, "20", id="int"),
        pytest.param(0, "0", id="zero"),
        pytest.param("0", "0", id="zero-string"),
        pytest.param(5.960464477539063e-08, "0.000000059604644775", id="tiny-float"),
        pytest.param("1.0000000000000000001", "1.000000000000000000", id="rounded"),
    ],
)
def test_money_becomes_a_decimal_string(value, expected):
    event = parse(custom_data={"value": value})

    assert event.to_wire()["custom_data"]["value"] == expected


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        Decimal("NaN"),
        "NaN",
        "Infinity",
        "abc",
        "1,000.00",
        "$5",
        "1_000",
        "",
        "1e999999999",
        10**19,
        True,
        [1],
    ],
)
def test_unusable_money_is_an_error(value):
    assert paths_of(custom_data={"value": value}) == ["custom_data.value"]


def test_money_rules_apply_to_item_price_and_predicted_ltv():
    custom_data = {"predicted_ltv": 0.1 + 0.2, "contents": [{"item_price": 19.99}]}

    wire = parse(custom_data=custom_data).to_wire()["custom_data"]

    assert (wire["predicted_ltv"], wire["contents"][0]["item_price"]) == (
        "0.3",
        "19.99",
    )


@pytest.mark.parametrize(("value", "expected"), [("usd", "USD"), (" eur ", "EUR")])
def test_currency_is_an_uppercase_iso_4217_code(value, expected):
    assert parse(custom_data={"currency": value}).custom_data == CustomData(
        currency=expected
    )


@pytest.mark.parametrize("value", ["XYZ", "dollars", "US", 840, ""])
def test_unknown_currency_is_an_error(value):
    assert paths_of(custom_data={"currency": value}) == ["custom_data.currency"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("en", "en"), ("EN", "en"), ("en-US", "en"), ("pt_BR", "pt")],
)
def test_language_becomes_a_two_letter_code(value, expected):
    assert parse(language=value).language == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("iw", "he", id="iw"),
        pytest.param("in-ID", "id", id="in"),
        pytest.param("ji", "yi", id="ji"),
        pytest.param("eng", "en", id="639-2"),
        pytest.param("ger", "de", id="639-2-bibliographic"),
        pytest.param("deu-CH", "de", id="639-2-tag"),
    ],
)
def test_legacy_and_three_letter_codes_become_the_iso_639_1_code(value, expected):
    """Java and old Android write iw, in and ji; Pinterest takes ISO 639-1 (#2)."""
    event = parse(language=value, device_info={"languages": [value, "en"]})

    assert (event.language, event.device_info.languages) == (expected, [expected, "en"])


@pytest.mark.parametrize("value", ["english", "xx", "e", "fil", "yue-HK", 1])
def test_unknown_language_is_an_error(value):
    assert paths_of(language=value) == ["language"]


def test_a_language_without_a_two_letter_code_is_an_error_saying_so():
    [error] = errors_of(language="fil")

    assert "ISO 639-1" in error.message
    assert "fil" not in error.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4, "4"),
        ("sku-4", "sku-4"),
        ("0", "0"),
        (42.0, "42"),
        (1e20, "100000000000000000000"),
        (-7.0, "-7"),
        (Decimal("7.00"), "7"),
        (Decimal("1E+3"), "1000"),
    ],
)
def test_content_ids_become_strings(value, expected):
    event = parse(
        custom_data={
            "content_ids": [value],
            "contents": [{"id": value}],
            "order_id": value,
        }
    )

    custom_data = event.to_wire()["custom_data"]
    assert (
        custom_data["content_ids"],
        custom_data["contents"][0]["id"],
        custom_data["order_id"],
    ) == ([expected], expected, expected)


@pytest.mark.parametrize(
    "value",
    [1.5, float("nan"), float("inf"), Decimal("7.5"), Decimal("NaN"), Decimal("-Inf")],
)
def test_a_numeric_id_with_a_fraction_or_not_finite_is_an_error(value):
    """An id with a fraction is almost surely a bug, not an id (#2)."""
    errors = errors_of(
        custom_data={"content_ids": ["a", value], "contents": [{"id": value}]}
    )

    assert [error.path for error in errors] == [
        "custom_data.content_ids.1",
        "custom_data.contents.0.id",
    ]
    assert "fraction" in errors[0].message


def test_a_decimal_id_too_long_to_write_is_refused_without_writing_it():
    """1E+999999999 would take a gigabyte to write out as an integer."""
    [error] = errors_of(custom_data={"order_id": Decimal("1E+999999999")})

    assert (error.path, "64 digits" in error.message) == ("custom_data.order_id", True)


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"custom_data": {"num_items": True}}, "custom_data.num_items"),
        (
            {"custom_data": {"contents": [{"quantity": False}]}},
            "custom_data.contents.0.quantity",
        ),
        ({"device_info": {"battery_level": True}}, "device_info.battery_level"),
        ({"device_info": {"cpu_cores": True}}, "device_info.cpu_cores"),
        ({"device_info": {"screen_density": True}}, "device_info.screen_density"),
        ({"device_info": {"screen_width": True}}, "device_info.screen_width"),
        ({"device_info": {"storage_size": False}}, "device_info.storage_size"),
        ({"app_info": {"window_height": True}}, "app_info.window_height"),
    ],
)
def test_true_and_false_are_no_numbers(overrides, path):
    """JSON's true is no count, though pydantic would read it as 1 (#2)."""
    assert errors_of(**overrides) == [
        FieldError(path, "must be an integer, not true or false")
    ]


def test_numeric_text_is_still_read_as_a_count():
    event = parse(custom_data={"num_items": "3", "contents": [{"quantity": 2}]})

    assert (event.custom_data.num_items, event.custom_data.contents[0].quantity) == (
        3,
        2,
    )


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"event_id": HUGE}, "event_id"),
        ({"custom_data": {"order_id": HUGE}}, "custom_data.order_id"),
        ({"custom_data": {"content_ids": ["a", HUGE]}}, "custom_data.content_ids.1"),
        (
            {"custom_data": {"contents": [{"id": HugeInt(-HUGE)}]}},
            "custom_data.contents.0.id",
        ),
    ],
)
def test_an_integer_id_too_long_to_write_out_is_an_error_naming_its_path(
    overrides, path
):
    assert errors_of(**overrides) == [
        FieldError(path, "is an integer of more than 64 digits; send it as a string")
    ]


def test_an_integer_id_of_64_digits_is_kept_as_its_decimal_string():
    longest = 10**64 - 1

    event = parse(event_id=longest, custom_data={"order_id": -longest})

    assert event.event_id == "9" * 64
    assert event.to_wire()["custom_data"]["order_id"] == "-" + "9" * 64


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"app_info": {"install_time": HUGE}}, "app_info.install_time"),
        ({"app_info": {"install_time": 10**22}}, "app_info.install_time"),
        (
            {"custom_data": {"external_measurement_vendor_id": 2**63}},
            "custom_data.external_measurement_vendor_id",
        ),
        ({"custom_data": {"num_items": 2**63}}, "custom_data.num_items"),
        (
            {"custom_data": {"contents": [{"quantity": -(2**63) - 1}]}},
            "custom_data.contents.0.quantity",
        ),
    ],
)
def test_integers_beyond_int64_are_an_error_naming_their_path(overrides, path):
    assert paths_of(**overrides) == [path]


def test_install_time_up_to_the_int64_maximum_is_kept():
    """13 digits and more are milliseconds, as for event_time."""
    event = parse(app_info={"install_time": 2**63 - 1})

    assert event.to_wire()["app_info"]["install_time"] == (2**63 - 1) // 1000


# --- app_info and device_info ---


def test_device_info_accepts_enum_values_as_plain_strings():
    event = parse(
        device_info={
            "form_factor": "tablet",
            "network_type": "cellular_5g",
            "os_family": "android",
        }
    )

    assert event.device_info == DeviceInfo(
        form_factor=FormFactor.TABLET,
        network_type=NetworkType.CELLULAR_5G,
        os_family=OSFamily.ANDROID,
    )


@pytest.mark.parametrize(
    ("device_info", "path"),
    [
        ({"battery_level": 101}, "device_info.battery_level"),
        ({"cpu_cores": -1}, "device_info.cpu_cores"),
        ({"screen_width": 30721}, "device_info.screen_width"),
        ({"storage_size": 1048577}, "device_info.storage_size"),
        ({"screen_density": 100001}, "device_info.screen_density"),
        ({"timezone_abbr": "TOOLONG"}, "device_info.timezone_abbr"),
        ({"locale": "x" * 36}, "device_info.locale"),
        ({"type": "x" * 101}, "device_info.type"),
        ({"languages": ["en"] * 101}, "device_info.languages"),
        ({"languages": ["en", "klingon"]}, "device_info.languages.1"),
        ({"form_factor": "phablet"}, "device_info.form_factor"),
        ({"network_type": "cellular_7g"}, "device_info.network_type"),
        ({"os_family": "beos"}, "device_info.os_family"),
    ],
)
def test_device_info_bounds_and_enums_are_enforced(device_info, path):
    assert paths_of(device_info=device_info) == [path]


@pytest.mark.parametrize(
    ("app_info", "path"),
    [
        ({"app_id": "x" * 201}, "app_info.app_id"),
        ({"app_store": "x" * 101}, "app_info.app_store"),
        ({"user_agent": "x" * 16385}, "app_info.user_agent"),
        ({"window_height": -1}, "app_info.window_height"),
        ({"window_width": 30721}, "app_info.window_width"),
        ({"install_time": -5}, "app_info.install_time"),
    ],
)
def test_app_info_bounds_are_enforced(app_info, path):
    assert paths_of(app_info=app_info) == [path]


def test_app_install_time_takes_the_event_time_forms_without_the_window():
    install = datetime(2020, 1, 2, tzinfo=UTC)

    event = parse(app_info={"install_time": install.isoformat()})

    assert event.app_info == AppInfo(install_time=int(install.timestamp()))


def test_bound_error_messages_name_the_bound():
    assert errors_of(device_info={"battery_level": 101}) == [
        FieldError("device_info.battery_level", "must be at most 100")
    ]


# --- unknown keys ---


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"tracking": True}, "tracking"),
        ({"user_data": {"email": EMAIL, "emial": "x"}}, "user_data.emial"),
        ({"custom_data": {"category_name": "shoes"}}, "custom_data.category_name"),
        (
            {"custom_data": {"contents": [{"id": "1"}, {"id": "2", "brand_id": "b"}]}},
            "custom_data.contents.1.brand_id",
        ),
        ({"app_info": {"app_colour": "red"}}, "app_info.app_colour"),
        ({"device_info": {"ram": 8}}, "device_info.ram"),
    ],
)
def test_unknown_key_is_an_error_naming_its_path(overrides, path):
    assert errors_of(**overrides) == [
        FieldError(path, "is not a field Pinterest accepts here")
    ]


# --- text that is not valid Unicode ---

LONE_SURROGATE = json.loads('"order \\ud800"')
"""What a JSON body's `"\\ud800"` decodes to: text no UTF-8 encoder takes."""


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"event_id": LONE_SURROGATE}, "event_id"),
        ({"event_source_url": LONE_SURROGATE}, "event_source_url"),
        ({"partner_name": LONE_SURROGATE}, "partner_name"),
        (
            {"user_data": {"email": EMAIL, "client_user_agent": LONE_SURROGATE}},
            "user_data.client_user_agent",
        ),
        (
            {"user_data": {"email": EMAIL, "click_id": LONE_SURROGATE}},
            "user_data.click_id",
        ),
        (
            {"user_data": {"email": EMAIL, "partner_id": LONE_SURROGATE}},
            "user_data.partner_id",
        ),
        ({"custom_data": {"order_id": LONE_SURROGATE}}, "custom_data.order_id"),
        (
            {"custom_data": {"content_ids": ["sku-1", LONE_SURROGATE]}},
            "custom_data.content_ids.1",
        ),
        (
            {"custom_data": {"contents": [{"item_name": LONE_SURROGATE}]}},
            "custom_data.contents.0.item_name",
        ),
        (
            {"custom_data": {"search_string": LONE_SURROGATE}},
            "custom_data.search_string",
        ),
        ({"app_info": {"app_name": LONE_SURROGATE}}, "app_info.app_name"),
        ({"device_info": {"brand": LONE_SURROGATE}}, "device_info.brand"),
    ],
)
def test_a_lone_surrogate_is_an_error_naming_its_path(overrides, path):
    assert errors_of(**overrides) == [
        FieldError(path, "must be valid Unicode text, without lone surrogates")
    ]


def test_build_event_refuses_a_lone_surrogate_at_build_time():
    with pytest.raises(EventValidationError) as caught:
        build_event(
            "checkout",
            user_data={"email": EMAIL, "click_id": LONE_SURROGATE},
            custom_data={"order_id": LONE_SURROGATE},
        )

    paths = [error.path for error in caught.value.errors]
    assert paths == ["user_data.click_id", "custom_data.order_id"]


def test_parse_events_names_the_item_holding_a_lone_surrogate():
    items = [event_data(), event_data(partner_name=LONE_SURROGATE)]

    with pytest.raises(EventValidationError) as caught:
        parse_events(items, now=NOW)

    assert [error.path for error in caught.value.errors] == ["data.1.partner_name"]


def test_a_lone_surrogate_in_personal_data_drops_the_value_with_a_warning():
    """Personal data follows the hasher's rule: dropped, never failing the event."""
    event = parse(user_data={"email": EMAIL, "first_name": LONE_SURROGATE})

    assert event.user_data.first_name is None
    assert [warning.path for warning in event.warnings] == ["user_data.first_name"]


# --- friendly names and wire codes ---


@pytest.mark.parametrize(
    ("friendly", "wire"),
    [
        ("email", "em"),
        ("phone", "ph"),
        ("first_name", "fn"),
        ("last_name", "ln"),
        ("gender", "ge"),
        ("date_of_birth", "db"),
        ("city", "ct"),
        ("state", "st"),
        ("zip_code", "zp"),
        ("country", "country"),
        ("external_id", "external_id"),
        ("hashed_maids", "hashed_maids"),
    ],
)
def test_hashed_fields_take_friendly_names_and_wire_codes_alike(friendly, wire):
    value = MAID_HASH
    base = {"client_ip_address": IP, "client_user_agent": USER_AGENT}
    by_name = parse(user_data=base | {friendly: value})
    by_code = parse(user_data=base | {wire: value})

    assert by_name.to_wire()["user_data"][wire] == [value]
    assert by_code.to_wire() == by_name.to_wire()


@pytest.mark.parametrize(
    ("model", "friendly", "wire", "value"),
    [
        (CustomData, "named_partner", "np", "ss-example"),
        (DeviceInfo, "device_type", "type", "phone"),
    ],
)
def test_renamed_fields_take_both_spellings_and_serialize_the_wire_code(
    model, friendly, wire, value
):
    by_name = model.model_validate({friendly: value})
    by_code = model.model_validate({wire: value})

    assert by_name == by_code
    assert by_name.model_dump(exclude_none=True) == {wire: value}


def test_serialized_user_data_uses_only_wire_codes():
    event = parse(
        user_data={
            "email": EMAIL,
            "first_name": "Ann",
            "zip_code": "94107",
            "client_ip_address": IP,
            "client_user_agent": USER_AGENT,
            "click_id": "dj0yJnU9abc",
        }
    )

    assert set(event.to_wire()["user_data"]) == {
        "em",
        "fn",
        "zp",
        "client_ip_address",
        "client_user_agent",
        "click_id",
    }


def test_user_data_exposes_hashes_by_friendly_attribute_names():
    user_data = parse(user_data={"em": EMAIL, "fn": "Ann"}).user_data

    assert (user_data.email, user_data.first_name) == ([EMAIL_HASH], [sha("ann")])


# --- the matching rule ---


@pytest.mark.parametrize(
    "user_data",
    [
        pytest.param({"email": EMAIL}, id="email"),
        pytest.param({"hashed_maids": MAID_HASH}, id="maid"),
        pytest.param(
            {"client_ip_address": IP, "client_user_agent": USER_AGENT},
            id="ip-and-user-agent",
        ),
    ],
)
def test_user_data_that_pinterest_can_match_is_accepted(user_data):
    assert parse(user_data=user_data).user_data.model_dump(exclude_none=True)


@pytest.mark.parametrize(
    "user_data",
    [
        pytest.param({"phone": "+14155550100"}, id="phone-only"),
        pytest.param({"client_ip_address": IP}, id="ip-only"),
        pytest.param({"client_user_agent": USER_AGENT}, id="user-agent-only"),
        pytest.param({"external_id": "u-1", "click_id": "abc"}, id="ids-only"),
        pytest.param({}, id="empty"),
    ],
)
def test_user_data_that_pinterest_cannot_match_is_an_error(user_data):
    assert errors_of(user_data=user_data) == [MATCHING_RULE_ERROR]


MATCHING_RULE_ERROR = FieldError(
    "user_data",
    "needs em, hashed_maids, or both client_ip_address and"
    " client_user_agent (after normalization)",
)


@pytest.mark.parametrize(
    ("user_data", "dropped"),
    [
        pytest.param(
            {"email": "   "},
            [FieldError("user_data.email", "dropped: empty after normalization")],
            id="email-dropped-as-empty",
        ),
        pytest.param(
            {"em": [EMAIL[:4], "@"], "phone": "12"},
            [
                FieldError(
                    "user_data.em.0",
                    "dropped: not an email address (needs one @ and no spaces)",
                ),
                FieldError(
                    "user_data.em.1",
                    "dropped: not an email address (needs one @ and no spaces)",
                ),
            ],
            id="emails-dropped-by-index",
        ),
        pytest.param(
            {"ip_address": "not an ip", "client_user_agent": USER_AGENT},
            [
                FieldError(
                    "user_data.ip_address", "dropped: not an IPv4 or IPv6 address"
                )
            ],
            id="ip-dropped-as-invalid",
        ),
    ],
)
def test_a_value_dropped_before_the_matching_rule_failed_is_named_too(
    user_data, dropped
):
    """The error names every field at fault, not only `user_data` (#2).

    Dropped values the rule does not count (the phone number) stay out.
    """
    assert errors_of(user_data=user_data) == [MATCHING_RULE_ERROR, *dropped]


def test_matching_rule_is_reported_beside_other_user_data_errors():
    assert paths_of(user_data={"phone": "+14155550100", "mail": "x"}) == [
        "user_data.mail",
        "user_data",
    ]


def test_missing_user_data_is_an_error():
    data = event_data()
    del data["user_data"]

    with pytest.raises(EventValidationError) as caught:
        parse_event(data, now=NOW)

    assert caught.value.errors == [FieldError("user_data", "is required")]


# --- every problem at once ---


def test_every_problem_is_listed_with_its_path():
    with pytest.raises(EventValidationError) as caught:
        parse_event(
            {
                "event_name": "add-to-cart",
                "action_source": "mail",
                "event_time": NOW - 30 * DAY,
                "user_data": {"phone": "+14155550100"},
                "custom_data": {
                    "currency": "EURO",
                    "value": "lots",
                    "contents": [{"id": "1", "quantity": "two"}],
                },
                "colour": "red",
            },
            now=NOW,
        )

    assert sorted(error.path for error in caught.value.errors) == [
        "action_source",
        "colour",
        "custom_data.contents.0.quantity",
        "custom_data.currency",
        "custom_data.value",
        "event_name",
        "event_time",
        "user_data",
    ]


def test_missing_required_fields_are_all_listed():
    with pytest.raises(EventValidationError) as caught:
        parse_event({})

    assert caught.value.errors == [
        FieldError("event_name", "is required"),
        FieldError("action_source", "is required"),
        FieldError("user_data", "is required"),
    ]


def test_parse_event_prefixes_error_paths():
    with pytest.raises(EventValidationError) as caught:
        parse_event(event_data(event_time="soon"), now=NOW, path="data.3")

    assert [error.path for error in caught.value.errors] == ["data.3.event_time"]


@pytest.mark.parametrize(("path", "expected"), [("", "event"), ("data.3.", "data.3")])
def test_an_event_that_is_not_an_object_is_an_error_at_its_root(path, expected):
    with pytest.raises(EventValidationError) as caught:
        parse_event(["not", "a", "mapping"], path=path)  # type: ignore[arg-type]

    assert caught.value.errors == [FieldError(expected, "must be an object")]


def test_parse_events_returns_every_event_in_order():
    items = [event_data(event_id="a"), event_data(event_id="b")]

    events = parse_events(items, now=NOW)

    assert [event.event_id for event in events] == ["a", "b"]


def test_parse_events_reports_the_problems_of_every_item():
    items = [
        event_data(event_time="soon"),
        event_data(),
        event_data(custom_data={"value": "x"}, language="xx"),
    ]

    with pytest.raises(EventValidationError) as caught:
        parse_events(items, now=NOW)

    assert [error.path for error in caught.value.errors] == [
        "data.0.event_time",
        "data.2.custom_data.value",
        "data.2.language",
    ]


def test_pydantic_validation_error_does_not_escape_direct_construction():
    """Constructing a model directly raises our error, never pydantic's."""
    with pytest.raises(EventValidationError) as caught:
        Event(
            event_name="checkout",
            action_source="web",
            user_data=UserData(email=EMAIL),
            colour="red",  # type: ignore[call-arg]
        )

    assert caught.value.errors == [
        FieldError("colour", "is not a field Pinterest accepts here")
    ]


def test_model_validate_json_raises_event_validation_error():
    with pytest.raises(EventValidationError) as caught:
        Event.model_validate_json(b'{"event_name": "checkout"}')

    assert [error.path for error in caught.value.errors] == [
        "action_source",
        "user_data",
    ]


@pytest.mark.parametrize(
    ("model", "data", "path"),
    [
        (UserData, {"email": EMAIL, "mail": "x"}, "user_data.mail"),
        (CustomData, {"value": "x"}, "custom_data.value"),
        (AppInfo, {"window_width": -1}, "app_info.window_width"),
        (DeviceInfo, {"brand": 1}, "device_info.brand"),
    ],
)
def test_standalone_models_name_paths_from_their_event_field(model, data, path):
    with pytest.raises(EventValidationError) as caught:
        model.model_validate(data)

    assert [error.path for error in caught.value.errors] == [path]


# --- serialization ---


def test_to_wire_omits_absent_fields():
    assert parse().to_wire() == {
        "event_name": "checkout",
        "action_source": "web",
        "event_time": NOW,
        "event_id": "order-1001",
        "user_data": {"em": [EMAIL_HASH]},
    }


def test_to_wire_keeps_zero_false_and_zero_string():
    event = parse(
        opt_out=False,
        wifi=False,
        custom_data={
            "value": 0,
            "num_items": 0,
            "order_id": "0",
            "search_string": "",
            "contents": [{"quantity": 0, "item_price": "0"}],
        },
        device_info={"battery_level": 0},
    )

    wire = event.to_wire()
    assert (wire["opt_out"], wire["wifi"], wire["device_info"]) == (
        False,
        False,
        {"battery_level": 0},
    )
    assert wire["custom_data"] == {
        "value": "0",
        "num_items": 0,
        "order_id": "0",
        "search_string": "",
        "contents": [{"quantity": 0, "item_price": "0"}],
    }


def test_explicit_none_is_absent():
    event = parse(custom_data={"value": None, "currency": "USD"}, wifi=None)

    assert "wifi" not in event.to_wire()
    assert event.to_wire()["custom_data"] == {"currency": "USD"}


def test_to_json_is_compact_json_of_to_wire():
    event = parse(custom_data={"value": "5", "currency": "USD"})

    payload = event.to_json()

    assert json.loads(payload) == event.to_wire()
    assert payload == json.dumps(event.to_wire(), separators=(",", ":")).encode()


def test_to_wire_event_carries_ids_and_the_serialized_payload():
    event = parse(event_name="quiz_done")

    assert event.to_wire_event() == WireEvent(
        "order-1001", "quiz_done", event.to_json()
    )


def test_wire_event_name_is_a_plain_string():
    assert type(parse().to_wire_event().event_name) is str


def test_batch_body_wraps_payloads_in_data():
    first, second = parse(event_id="a"), parse(event_id="b")

    body = batch_body([first.to_json(), second.to_json()])

    assert json.loads(body) == {"data": [first.to_wire(), second.to_wire()]}


@pytest.mark.parametrize("mode", ["validation", "serialization"])
def test_event_model_has_a_json_schema(mode):
    """Frameworks that document models (FastAPI) can describe an Event."""
    schema = Event.model_json_schema(mode=mode, by_alias=True)

    assert {"em", "client_ip_address"} <= set(schema["$defs"]["UserData"]["properties"])


# --- warnings ---


def test_unusable_personal_data_is_dropped_with_a_warning_not_an_error():
    event = parse(user_data={"email": EMAIL, "gender": "robot"})

    assert event.user_data.gender is None
    assert [warning.path for warning in event.warnings] == ["user_data.gender"]


def test_warning_paths_follow_the_spelling_given():
    event = parse(user_data={"em": [EMAIL, "not an address"]})

    assert [warning.path for warning in event.warnings] == ["user_data.em.1"]


@pytest.mark.parametrize(
    "duplicate",
    [
        copy.copy,
        copy.deepcopy,
        lambda event: event.model_copy(deep=True),
        lambda event: pickle.loads(pickle.dumps(event)),
    ],
    ids=["copy", "deepcopy", "model_copy", "pickle"],
)
def test_warnings_survive_copies(duplicate):
    event = parse(user_data={"email": EMAIL, "gender": "robot"})

    assert duplicate(event).warnings == event.warnings


def test_an_event_without_dropped_values_has_no_warnings():
    assert parse().warnings == ()


# --- privacy ---

SECRETS = {
    "email": "secret.person@example.org",
    "phone": "+1 415 555 0199",
    "first_name": "Zebediah",
    "city": "Llanfairpwllgwyngyll",
    "external_id": "customer-8675309",
    "client_ip_address": "198.51.100.23",
    "client_user_agent": "SecretAgent/9.9",
    "click_id": "dj0yJnU9secretclick",
    "partner_id": "partner-secret-42",
}


def secret_texts() -> list[str]:
    """Every raw value above, and the hashes of the hashed ones."""
    hashed = parse(user_data=SECRETS).to_wire()["user_data"]
    texts = list(SECRETS.values())
    for value in hashed.values():
        texts.extend(value if isinstance(value, list) else [value])
    return texts


def leaked(text: str) -> list[str]:
    return [secret for secret in secret_texts() if secret in text]


def test_repr_of_event_hides_user_data():
    event = parse(user_data=SECRETS, event_source_url="https://shop.example/?e=x")

    assert leaked(repr(event)) == []
    assert "https://shop.example" not in repr(event)


def test_str_of_event_hides_user_data():
    assert leaked(str(parse(user_data=SECRETS))) == []


@pytest.mark.parametrize("render", [repr, str])
def test_user_data_repr_says_which_fields_are_set(render):
    user_data = parse(user_data=SECRETS).user_data

    text = render(user_data)

    assert leaked(text) == []
    assert "email=<1 value>" in text
    assert "client_ip_address=<set>" in text
    assert "gender" not in text


def test_repr_hides_user_data_that_skipped_validation():
    """model_construct and model_copy(update=) leave raw values unhashed."""
    constructed = Event.model_construct(
        event_name="checkout", action_source="web", user_data=dict(SECRETS)
    )
    copied = parse(user_data=SECRETS).model_copy(update={"user_data": SECRETS})

    for event in (constructed, copied):
        assert leaked(repr(event)) == []
        assert "user_data=<set>" in repr(event)


# Without em, hashed_maids or both IP and user agent: the matching rule fails.
UNMATCHABLE = {key: SECRETS[key] for key in ("phone", "first_name", "city", "click_id")}


def chain_of(error: BaseException) -> list[BaseException]:
    """The error and every exception it chains, as a debugger would find them."""
    found: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        pending += [current.__cause__, current.__context__]
    return found


def everything_said_by(errors: list[BaseException]) -> str:
    """Every message, repr and attribute of `errors`, for a leak to be found."""
    return " ".join(
        f"{error!s} {error!r} {vars(error)!r} {error.args!r}" for error in errors
    )


def raised_by(call: Any) -> BaseException:
    with pytest.raises(EventValidationError) as caught:
        call()
    return caught.value


EVENT_WITH_SECRETS = event_data(user_data=UNMATCHABLE, custom_data={"value": "x"})
VALIDATING_CALLS = {
    "parse_event": lambda: parse_event(EVENT_WITH_SECRETS, now=NOW),
    "parse_events": lambda: parse_events([EVENT_WITH_SECRETS], now=NOW),
    "build_event": lambda: build_event("checkout", user_data=UNMATCHABLE),
    "Event": lambda: Event(**EVENT_WITH_SECRETS),
    "model_validate": lambda: Event.model_validate(EVENT_WITH_SECRETS),
    "model_validate_json": lambda: Event.model_validate_json(
        json.dumps(EVENT_WITH_SECRETS)
    ),
    "UserData": lambda: UserData(**UNMATCHABLE),
    "CustomData": lambda: CustomData(search_string=SECRETS["first_name"], value="x"),
    "event_time": lambda: parse(event_time=SECRETS["email"]),
}


@pytest.mark.parametrize("call", VALIDATING_CALLS.values(), ids=VALIDATING_CALLS.keys())
def test_a_validation_error_chains_nothing_that_holds_the_input(call):
    """pydantic's error keeps the input, raw personal data included; it must
    not be reachable from ours as `__context__` or `__cause__` (#2)."""
    chain = chain_of(raised_by(call))

    assert [type(error) for error in chain] == [EventValidationError]
    assert leaked(everything_said_by(chain)) == []


def with_email_appended(event: Event) -> Event:
    assert event.user_data.email is not None
    event.user_data.email.append(SECRETS["email"])
    return event


def with_phone_assigned(event: Event) -> Event:
    event.user_data.phone = [SECRETS["phone"]]
    return event


UNVALIDATED_EVENTS = {
    "model_copy-mapping": (
        lambda: parse().model_copy(update={"user_data": {"em": SECRETS["email"]}}),
        "user_data",
    ),
    "model_construct-user-data": (
        lambda: build_event(
            "checkout", user_data=UserData.model_construct(email=[SECRETS["email"]])
        ),
        "user_data.em",
    ),
    "user-data-model_copy": (
        lambda: parse().model_copy(
            update={
                "user_data": parse().user_data.model_copy(
                    update={"first_name": SECRETS["first_name"]}
                )
            }
        ),
        "user_data.fn",
    ),
    "appended-in-place": (lambda: with_email_appended(parse()), "user_data.em"),
    "assigned": (lambda: with_phone_assigned(parse()), "user_data.ph"),
    "uppercase-digest": (
        lambda: parse().model_copy(
            update={"user_data": UserData.model_construct(email=[EMAIL_HASH.upper()])}
        ),
        "user_data.em",
    ),
    "short-raw-beside-long-hex": (
        lambda: build_event(
            "checkout",
            user_data=UserData.model_construct(
                phone=["16505551212", EMAIL_HASH + EMAIL_HASH[:53]]
            ),
        ),
        "user_data.ph",
    ),
    "custom-data-mapping": (
        lambda: parse().model_copy(
            update={"custom_data": {"search_string": SECRETS["first_name"]}}
        ),
        "custom_data",
    ),
    "contents-mapping": (
        lambda: parse(custom_data={"value": "1"}).model_copy(
            update={
                "custom_data": CustomData.model_construct(
                    contents=[{"item_name": SECRETS["first_name"]}]
                )
            }
        ),
        "custom_data.contents",
    ),
}
SERIALIZERS = {
    "to_json": Event.to_json,
    "to_wire": Event.to_wire,
    "to_wire_event": Event.to_wire_event,
    "model_dump": Event.model_dump,
    "model_dump_json": Event.model_dump_json,
}


@pytest.mark.parametrize("serialize", SERIALIZERS.values(), ids=SERIALIZERS.keys())
@pytest.mark.parametrize(
    ("make", "path"), UNVALIDATED_EVENTS.values(), ids=UNVALIDATED_EVENTS.keys()
)
def test_an_event_holding_what_validation_would_refuse_is_not_serialized(
    make, path, serialize
):
    """Raw personal data never reaches the wire past validation (#2); the
    error names the field, not the value, and pydantic's serializer, whose
    warnings would quote the value, never runs (warnings are errors here)."""
    event = make()

    error = raised_by(lambda: serialize(event))

    assert [e.path for e in error.errors] == [path]
    assert "without validation" in str(error)
    assert leaked(everything_said_by(chain_of(error))) == []


@pytest.mark.parametrize(
    "duplicate",
    [
        copy.copy,
        copy.deepcopy,
        lambda event: event.model_copy(),
        lambda event: event.model_copy(deep=True),
        lambda event: pickle.loads(pickle.dumps(event)),
        lambda event: event.model_copy(update={"event_id": "other"}),
    ],
    ids=["copy", "deepcopy", "model_copy", "model_copy-deep", "pickle", "update"],
)
def test_copies_of_a_validated_event_serialize_as_it_does(duplicate):
    event = parse(
        user_data=SECRETS | {"em": [EMAIL, "b@example.com"]},
        custom_data={"contents": [{"id": "sku-1"}]},
    )
    original = json.loads(event.to_json())
    copied = json.loads(duplicate(event).to_json())

    assert copied | {"event_id": ""} == original | {"event_id": ""}


def test_a_constructed_user_data_holding_digests_only_serializes():
    """Digests built elsewhere pass, through the full check."""
    user_data = UserData.model_construct(email=[EMAIL_HASH], hashed_maids=[MAID_HASH])
    event = parse().model_copy(update={"user_data": user_data})

    assert json.loads(event.to_json())["user_data"] == {
        "em": [EMAIL_HASH],
        "hashed_maids": [MAID_HASH],
    }


def test_repr_still_shows_validated_nested_models():
    event = parse(custom_data={"contents": [{"id": "sku-1"}]})

    assert "ContentItem(id='sku-1')" in repr(event)


def test_wire_event_repr_shows_its_ids_but_not_the_payload():
    """The payload holds hashes and unhashed ids, which are personal data."""
    event = parse(user_data=SECRETS)

    text = repr(event.to_wire_event())

    assert leaked(text) == []
    assert event.event_id in text
    assert "checkout" in text
    assert "bytes>" in text


def test_repr_of_custom_data_hides_the_search_string():
    custom_data = CustomData(search_string="Zebediah's medication", value="5")

    assert "Zebediah" not in repr(custom_data)


def test_validation_error_messages_hold_no_input_values():
    secret = "secret.person@example.org"
    with pytest.raises(EventValidationError) as caught:
        parse_event(
            {
                "event_name": "checkout",
                "action_source": secret,
                "event_time": secret,
                "event_id": [secret],
                "user_data": {"email": 42, "client_ip_address": secret, "x": secret},
                "custom_data": {"currency": secret, "value": secret, "np": 7},
                "language": secret,
                "device_info": {"form_factor": secret, "brand": secret * 10},
                "opt_out": secret,
                "extra": secret,
            },
            now=NOW,
        )

    rendered = str(caught.value) + repr(caught.value.errors)
    assert len(caught.value.errors) >= 10
    assert "secret" not in rendered


def test_unknown_key_names_are_paths_but_values_are_not_repeated():
    """A key is part of the path; its value never reaches the message."""
    with pytest.raises(EventValidationError) as caught:
        parse(custom_data={"shoe_size": "Zebediah"})

    assert "Zebediah" not in str(caught.value)


def test_warnings_name_the_field_but_not_the_value():
    event = parse(user_data={"email": EMAIL, "gender": "Zebediah"})

    assert event.warnings
    assert all("Zebediah" not in repr(warning) for warning in event.warnings)


def test_building_events_logs_no_personal_data(caplog):
    caplog.set_level(logging.DEBUG)

    parse(user_data=SECRETS | {"gender": "Zebediah", "date_of_birth": "03/04/1997"})
    with pytest.raises(EventValidationError):
        parse(user_data={"phone": SECRETS["phone"]}, event_time="Zebediah")

    logged = "\n".join(
        record.getMessage() + repr(record.args) for record in caplog.records
    )
    assert leaked(logged) == []
    assert "Zebediah" not in logged


# --- robustness ---


def wire_and_friendly_names(model: type[Any]) -> list[str]:
    return sorted(
        {
            spelling
            for name, field in model.model_fields.items()
            for spelling in (name, field.alias or name)
        }
    )


FIELD_NAMES = sorted(
    {
        name
        for model in (Event, UserData, CustomData, AppInfo, DeviceInfo)
        for name in wire_and_friendly_names(model)
    }
    | {"contents", "id", "item_price", "quantity", "junk"}
)
# Text with lone surrogates (what JSON's "\ud800" decodes to), and integers
# past int64 and past the 4300 digits Python writes out by default.
# (`st.text` with such an alphabet almost never picks a surrogate: a list of
# characters drawn from either strategy does.)
any_text = st.lists(
    st.characters() | st.characters(categories=["Cs"]), max_size=12
).map("".join)
any_integer = st.integers() | st.sampled_from(
    [2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**64, HUGE, HugeInt(-HUGE)]
)
json_leaves = st.one_of(any_text, any_integer, st.none() | st.booleans() | st.floats())
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(FIELD_NAMES), children, max_size=4)
    ),
    max_leaves=12,
)


CHANGED_MODELS = (Event, UserData, CustomData, ContentItem, AppInfo, DeviceInfo)
TARGETS = [
    (model, name) for model in CHANGED_MODELS for name in wire_and_friendly_names(model)
]
# Values that have slipped past validation before; drawn often, on purpose.
TRICKY_VALUES = [HUGE, HugeInt(-HUGE), 2**63, -(2**63) - 1, "\ud800", "id-\udfff"]
tricky_values = st.sampled_from(TRICKY_VALUES)
changed_values = st.one_of(
    tricky_values,
    st.lists(tricky_values, min_size=1, max_size=2),
    json_leaves | st.lists(json_leaves, max_size=3),
)
VALID_TO_CHANGE = event_data(
    user_data={
        "email": EMAIL,
        "client_ip_address": IP,
        "client_user_agent": USER_AGENT,
    },
    custom_data={"contents": [{"id": "sku-1"}]},
    app_info={},
    device_info={},
)


def objects_of(data: dict[str, Any]) -> dict[type[Any], dict[str, Any]]:
    """The objects of an event shaped like `VALID_TO_CHANGE`, by model."""
    return {
        Event: data,
        UserData: data["user_data"],
        CustomData: data["custom_data"],
        ContentItem: data["custom_data"]["contents"][0],
        AppInfo: data["app_info"],
        DeviceInfo: data["device_info"],
    }


@st.composite
def changed_valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one or two of its fields, nested ones included, set
    to anything.

    The rest of the event stays valid, so a value that slips past
    validation and breaks serialization (a surrogate, a huge integer) is not
    hidden behind an error elsewhere in the event.
    """
    data = copy.deepcopy(VALID_TO_CHANGE)
    objects = objects_of(data)
    targets = st.lists(st.sampled_from(TARGETS), min_size=1, max_size=4, unique=True)
    for model, name in draw(targets):
        objects[model][name] = draw(changed_values)
    return data


def parsed_payload_or_errors(data: Any) -> tuple[Any, list[FieldError]]:
    """The decoded JSON of the event parsed from `data`, or its errors."""
    try:
        payload = parse_event(data, now=NOW).to_json()
    except EventValidationError as exc:
        return None, exc.errors

    return json.loads(payload.decode("utf-8")), []


arbitrary_mappings = st.dictionaries(
    st.sampled_from(FIELD_NAMES), json_values, max_size=12
)


@settings(max_examples=600, deadline=None)
@given(data=arbitrary_mappings | changed_valid_events())
def test_any_input_parses_or_raises_event_validation_error(data):
    """No other exception, pydantic's included, escapes parse_event, and an
    event that parses serializes to UTF-8 JSON."""
    payload, errors = parsed_payload_or_errors(data)

    assert payload is not None or errors
    assert all(error.path and error.message for error in errors)


def test_every_field_set_to_a_tricky_value_parses_or_raises_validation_error():
    """The values the property test draws most often, in every field in turn."""
    escaped: list[str] = []
    for model, name in TARGETS:
        for value in [*TRICKY_VALUES, TRICKY_VALUES]:  # each, then all in a list
            data = copy.deepcopy(VALID_TO_CHANGE)
            objects_of(data)[model][name] = value
            try:
                parsed_payload_or_errors(data)
            except Exception as exc:  # each escape is listed, not raised
                escaped.append(f"{model.__name__}.{name}: {type(exc).__name__}")

    assert escaped == []
