"""Serialized events validate against Pinterest's own OpenAPI description.

The schema is read from the shared reference folder beside the repository
(`../shared/reference/pinterest-events-openapi.json`); these tests skip only
when that folder is absent, as in a bare copy of the repository.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pycountry
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from pydantic import BaseModel

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
    batch_body,
    parse_event,
)
from pinterest_mw.testing import FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, FakePinterestAPI

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
SCHEMA_FILE = REFERENCE / "pinterest-events-openapi.json"

pytestmark = pytest.mark.skipif(
    not REFERENCE.is_dir(),
    reason=f"Pinterest's OpenAPI description is not available: {REFERENCE} is absent",
)

NOW = 1_700_000_000
DAY = 24 * 3600
HASHED_WIRE_CODES = frozenset(
    {"em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country"}
    | {"external_id", "hashed_maids"}
)
DIGEST = re.compile(r"[0-9a-f]{64}")
MAID = "6d92078a-8246-4ba4-ae5b-76104861e7dc"


@cache
def openapi_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return document


@cache
def schemas() -> dict[str, Any]:
    found: dict[str, Any] = openapi_document()["components"]["schemas"]
    return found


@cache
def body_validator() -> OAS30Validator:
    """Validates a request body against `ConversionEvents`, resolving $refs."""
    document = openapi_document()
    schema = {
        **document["components"]["schemas"]["ConversionEvents"],
        "components": document["components"],
    }
    return OAS30Validator(schema, format_checker=oas30_format_checker)


def schema_violations(body: object) -> list[str]:
    errors = body_validator().iter_errors(body)
    return sorted(f"{list(error.absolute_path)}: {error.message}" for error in errors)


def digest_violations(body: dict[str, Any]) -> list[str]:
    """Hashed user-data fields that are not arrays of lowercase SHA-256 hex."""
    problems = []
    for index, event in enumerate(body["data"]):
        for code, value in event["user_data"].items():
            if code not in HASHED_WIRE_CODES:
                continue
            if not isinstance(value, list) or not all(
                isinstance(item, str) and DIGEST.fullmatch(item) for item in value
            ):
                problems.append(f"data.{index}.user_data.{code}")
    return problems


def body_of(*events: Event) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(batch_body(e.to_json() for e in events))
    return decoded


# --- hand-picked events ---


def every_field_event() -> dict[str, Any]:
    """A web checkout that sets every field of the v5 event."""
    return {
        "event_name": "checkout",
        "action_source": "web",
        "event_time": NOW,
        "event_id": "order-1001",
        "event_source_url": "https://shop.example/checkout/thanks",
        "opt_out": False,
        "partner_name": "ss-example",
        "app_id": "429047995",
        "app_name": "Example Shop",
        "app_version": "7.2.1",
        "device_brand": "Apple",
        "device_carrier": "Example Mobile",
        "device_model": "iPhone15,2",
        "device_type": "phone",
        "os_version": "17.5",
        "wifi": True,
        "language": "en-US",
        "user_data": {
            "email": ["Ann@Example.com", "ann.work@example.org"],
            "phone": "+1 (415) 555-0100",
            "first_name": "Ann",
            "last_name": "O'Neil",
            "gender": "female",
            "date_of_birth": "1990-04-01",
            "city": "San Francisco",
            "state": "California",
            "zip_code": "94107-1234",
            "country": "USA",
            "external_id": "cust-1001",
            "hashed_maids": MAID,
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0 (iPhone) Safari/605.1.15",
            "click_id": "dj0yJnU9YWJjZGVm",
            "partner_id": "rampid-xyz",
        },
        "custom_data": {
            "currency": "usd",
            "value": 72.39,
            "content_ids": ["sku-1", 2],
            "contents": [
                {
                    "id": "sku-1",
                    "item_price": "19.99",
                    "quantity": 2,
                    "item_name": "Mug",
                    "item_category": "Kitchen",
                    "item_brand": "Example",
                },
                {"id": 2, "item_price": 32.41, "quantity": 1},
            ],
            "num_items": 3,
            "order_id": 1001,
            "search_string": "blue mug",
            "opt_out_type": "LDP",
            "np": "ss-example",
            "content_name": "Checkout",
            "content_category": "Kitchen",
            "content_brand": "Example",
            "external_measurement_id": "m-1",
            "external_measurement_vendor_id": 7,
            "predicted_ltv": "250.00",
        },
        "app_info": {
            "app_id": "429047995",
            "app_name": "Example Shop",
            "app_package_name": "com.example.shop",
            "app_store": "Apple App Store",
            "app_version": "7.2.1",
            "install_time": NOW - 30 * DAY,
            "user_agent": "ExampleShop/7.2.1 CFNetwork/1.0",
            "window_height": 2556,
            "window_width": 1179,
        },
        "device_info": {
            "battery_level": 87,
            "brand": "Apple",
            "carrier": "Example Mobile",
            "cpu_cores": 6,
            "external_storage_free_space": 0,
            "external_storage_size": 0,
            "form_factor": "cellphone",
            "kernel_version": "23.5.0",
            "languages": ["en-US", "es"],
            "locale": "en_US",
            "model": "iPhone15,2",
            "network_type": "wifi",
            "os_family": "ios",
            "os_name": "iOS",
            "os_release_name": "Sonoma",
            "os_version": "17.5",
            "screen_density": 460,
            "screen_height": 2556,
            "screen_width": 1179,
            "storage_free_space": 41,
            "storage_size": 128,
            "timezone": "America/Los_Angeles",
            "timezone_abbr": "PDT",
            "type": "phone",
        },
    }


HAND_PICKED = {
    "every-field": every_field_event(),
    "ip-and-user-agent-only": {
        "event_name": "page_visit",
        "action_source": "web",
        "event_time": NOW,
        "user_data": {"ip_address": "2001:db8::1", "user_agent": "curl/8.0"},
    },
    "maid-only-app-event": {
        "event_name": "app_install",
        "action_source": "app_android",
        "event_time": NOW,
        "event_id": 42,
        "user_data": {"hashed_maids": [MAID, MAID.upper()]},
        "device_info": {"os_family": "android", "form_factor": "tablet"},
    },
    "zeros-and-false": {
        "event_name": "add_to_cart",
        "action_source": "offline",
        "event_time": NOW,
        "event_id": "0",
        "opt_out": False,
        "wifi": False,
        "user_data": {"em": "a@example.com"},
        "custom_data": {"value": 0, "num_items": 0, "order_id": "0"},
    },
    "advertiser-defined-name-and-wire-codes": {
        "event_name": "Quiz_Completed",
        "action_source": "app_ios",
        "event_time": NOW * 1000,
        "user_data": {
            "em": "b@example.com",
            "ph": "+44 20 7946 0958",
            "zp": "SW1A 1AA",
        },
    },
}


@pytest.mark.parametrize("data", HAND_PICKED.values(), ids=HAND_PICKED.keys())
def test_hand_picked_event_validates_against_pinterests_schema(data):
    body = body_of(parse_event(data, now=NOW))

    assert schema_violations(body) == []


@pytest.mark.parametrize("data", HAND_PICKED.values(), ids=HAND_PICKED.keys())
def test_hand_picked_event_sends_hashed_fields_as_digest_arrays(data):
    assert digest_violations(body_of(parse_event(data, now=NOW))) == []


def test_a_batch_of_every_hand_picked_event_validates():
    events = [parse_event(data, now=NOW) for data in HAND_PICKED.values()]

    assert schema_violations(body_of(*events)) == []


def test_every_field_event_sets_every_field_in_the_schema():
    """The hand-picked event leaves no field of Pinterest's schema untested."""
    event = body_of(parse_event(every_field_event(), now=NOW))["data"][0]
    properties = schemas()["ConversionEvents"]["properties"]["data"]["items"]

    assert set(event) == set(properties["properties"])
    assert set(event["user_data"]) == set(user_data_properties())
    assert set(event["custom_data"]) == set(custom_data_schema()["properties"])
    assert set(event["custom_data"]["contents"][0]) == set(
        custom_data_schema()["properties"]["contents"]["items"]["properties"]
    )
    assert set(event["app_info"]) == set(
        schemas()["ConversionEventAppInfo"]["properties"]
    )
    assert set(event["device_info"]) == set(
        schemas()["ConversionEventDeviceInfo"]["properties"]
    )


@pytest.mark.parametrize(
    ("change", "description"),
    [
        (lambda e: e["custom_data"].update(value=19.99), "value as a number"),
        (lambda e: e["custom_data"].update(category_name="x"), "unknown key"),
        (lambda e: e.update(user_data={"ph": ["0" * 64]}), "phone-only user data"),
        (lambda e: e["user_data"].update(em="0" * 64), "hashed field not an array"),
        (lambda e: e.update(event_time=2**63), "event_time beyond int64"),
        (lambda e: e["device_info"].update(battery_level=101), "bound exceeded"),
        (lambda e: e["device_info"].update(os_family="beos"), "value outside enum"),
    ],
)
def test_the_schema_check_rejects_what_pinterest_rejects(change, description):
    """The validator is not vacuous: known-bad payloads fail it."""
    event = body_of(parse_event(every_field_event(), now=NOW))["data"][0]
    change(event)

    assert schema_violations({"data": [event]}), description


# --- the fake refuses what the schema refuses, and nothing else ---

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def contents_item(event: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = event["custom_data"]["contents"][0]
    return item


BOUNDARY_CHANGES = {
    "event_time-above-int64": lambda e: e.update(event_time=INT64_MAX + 1),
    "event_time-below-int64": lambda e: e.update(event_time=INT64_MIN - 1),
    "num_items-int64-max": lambda e: e["custom_data"].update(num_items=INT64_MAX),
    "num_items-int64-min": lambda e: e["custom_data"].update(num_items=INT64_MIN),
    "num_items-above-int64": lambda e: e["custom_data"].update(num_items=INT64_MAX + 1),
    "num_items-below-int64": lambda e: e["custom_data"].update(num_items=INT64_MIN - 1),
    "quantity-int64-max": lambda e: contents_item(e).update(quantity=INT64_MAX),
    "quantity-above-int64": lambda e: contents_item(e).update(quantity=INT64_MAX + 1),
    "quantity-below-int64": lambda e: contents_item(e).update(quantity=INT64_MIN - 1),
    "install_time-above-int64": lambda e: e["app_info"].update(
        install_time=INT64_MAX + 1
    ),
    "install_time-negative": lambda e: e["app_info"].update(install_time=-1),
    "vendor_id-above-int64": lambda e: e["custom_data"].update(
        external_measurement_vendor_id=INT64_MAX + 1
    ),
    "battery-above-maximum": lambda e: e["device_info"].update(battery_level=101),
    "window-above-maximum": lambda e: e["app_info"].update(window_width=30721),
    "storage-below-minimum": lambda e: e["device_info"].update(storage_size=-1),
}


@pytest.mark.parametrize(
    "change", BOUNDARY_CHANGES.values(), ids=BOUNDARY_CHANGES.keys()
)
def test_the_fake_refuses_exactly_what_the_schema_refuses(change):
    """A 400 from the fake, and only then, for a body the schema rejects."""
    event = body_of(parse_event(every_field_event(), now=NOW))["data"][0]
    change(event)
    body = {"data": [event]}
    fake = FakePinterestAPI(clock=lambda: NOW)
    request = httpx.Request(
        "POST",
        f"https://api.pinterest.com/v5/ad_accounts/{FAKE_AD_ACCOUNT_ID}/events",
        json=body,
        headers={"Authorization": f"Bearer {FAKE_ACCESS_TOKEN}"},
    )

    refused = fake.handle(request).status_code == 400

    assert refused == bool(schema_violations(body))


# --- the model covers the schema, bounds and enums included ---


def user_data_properties() -> dict[str, Any]:
    found: dict[str, Any] = schemas()["ConversionEventsUserDataProperties"][
        "properties"
    ]
    return found


def custom_data_schema() -> dict[str, Any]:
    event_schema = schemas()["ConversionEvents"]["properties"]["data"]["items"]
    found: dict[str, Any] = event_schema["properties"]["custom_data"]
    return found


def schema_for(model: type[BaseModel]) -> dict[str, Any]:
    event_schema = schemas()["ConversionEvents"]["properties"]["data"]["items"]
    found: dict[str, Any] = {
        Event: event_schema,
        UserData: {"properties": user_data_properties()},
        CustomData: custom_data_schema(),
        ContentItem: custom_data_schema()["properties"]["contents"]["items"],
        AppInfo: schemas()["ConversionEventAppInfo"],
        DeviceInfo: schemas()["ConversionEventDeviceInfo"],
    }[model]
    return found


MODELS = [Event, UserData, CustomData, ContentItem, AppInfo, DeviceInfo]
CONSTRAINTS = ("maxLength", "minimum", "maximum", "maxItems", "enum")


def wire_names(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_model_has_exactly_the_fields_of_pinterests_schema(model):
    assert wire_names(model) == set(schema_for(model)["properties"])


def declared_constraints(schema: dict[str, Any]) -> dict[str, Any]:
    return {key: schema[key] for key in CONSTRAINTS if key in schema}


def model_constraints(model: type[BaseModel], name: str) -> dict[str, Any]:
    """The constraints our model's JSON schema puts on one wire field."""
    json_schema = model.model_json_schema(by_alias=True)
    definitions = json_schema.get("$defs", {})
    found: dict[str, Any] = {}
    for option in json_schema["properties"][name].get("anyOf", []):
        if "$ref" in option:
            option = definitions[option["$ref"].rsplit("/", 1)[-1]]
        found |= declared_constraints(option)
    return found


@pytest.mark.parametrize(
    ("model", "name"),
    [
        (model, name)
        for model in (AppInfo, DeviceInfo)
        for name, schema in schema_for(model)["properties"].items()
        if declared_constraints(schema)
    ]
    if REFERENCE.is_dir()
    else [],
)
def test_model_enforces_every_bound_and_enum_of_the_schema(model, name):
    declared = declared_constraints(schema_for(model)["properties"][name])
    expected = declared | OUR_EXTRA_BOUNDS.get((model, name), {})

    assert model_constraints(model, name) == expected


# Where our model is stricter than the schema, on purpose: install_time is a
# Unix time like event_time, whose int64 format it is held to.
OUR_EXTRA_BOUNDS: dict[tuple[type[BaseModel], str], dict[str, Any]] = {
    (AppInfo, "install_time"): {"maximum": 2**63 - 1},
}


def test_enums_match_the_values_pinterest_documents():
    device = schemas()["ConversionEventDeviceInfo"]["properties"]

    assert [
        [member.value for member in FormFactor],
        [member.value for member in NetworkType],
        [member.value for member in OSFamily],
    ] == [
        device["form_factor"]["enum"],
        device["network_type"]["enum"],
        device["os_family"]["enum"],
    ]


# --- generated events ---

short_text = st.text(max_size=12)
identifiers = st.one_of(short_text, st.integers(min_value=0, max_value=2**63))
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
digests = st.text("0123456789abcdefABCDEF", min_size=64, max_size=64)
money = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
    st.decimals(min_value=-(10**9), max_value=10**9, places=2, allow_nan=False).flatmap(
        lambda d: st.sampled_from([d, str(d)])
    ),
)
currencies = st.sampled_from(sorted(c.alpha_3 for c in pycountry.currencies)).flatmap(
    lambda code: st.sampled_from([code, code.lower()])
)
languages = st.sampled_from(["en", "DE", "pt-BR", "zh_Hant", "fr-CA"])
moments = st.integers(min_value=NOW - 7 * DAY, max_value=NOW + 300)
event_times = st.one_of(
    moments,
    moments.map(lambda seconds: seconds * 1000),
    moments.map(str),
    moments.map(
        lambda seconds: datetime.fromtimestamp(seconds, UTC).astimezone(UTC).isoformat()
    ),
    moments.map(lambda seconds: datetime.fromtimestamp(seconds, UTC)),
)
phones = st.one_of(
    st.from_regex(r"\+1[2-9][0-9]{2}[2-9][0-9]{6}", fullmatch=True),
    st.from_regex(r"\+44 ?20 ?[0-9]{4} ?[0-9]{4}", fullmatch=True),
    short_text,
)
user_agents = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40
).filter(str.strip)

FRIENDLY_TO_WIRE = {
    "email": "em",
    "phone": "ph",
    "first_name": "fn",
    "last_name": "ln",
    "gender": "ge",
    "date_of_birth": "db",
    "city": "ct",
    "state": "st",
    "zip_code": "zp",
}


@st.composite
def user_data(draw: st.DrawFn) -> dict[str, Any]:
    """User data that meets the matching rule, with any other fields added."""
    matching = draw(
        st.one_of(
            st.fixed_dictionaries({"email": st.emails()}),
            st.fixed_dictionaries(
                {"hashed_maids": st.lists(digests, min_size=1, max_size=3)}
            ),
            st.fixed_dictionaries(
                {
                    "client_ip_address": st.ip_addresses().map(str),
                    "client_user_agent": user_agents,
                }
            ),
        )
    )
    others = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "phone": phones | st.lists(phones, max_size=3),
                "first_name": short_text,
                "last_name": short_text | st.lists(short_text, max_size=2),
                "gender": st.sampled_from(["f", "Male", "non-binary", "robot"]),
                "date_of_birth": st.dates().map(str) | short_text,
                "city": short_text,
                "state": st.sampled_from(["CA", "Ontario", "texas"]) | short_text,
                "zip_code": st.from_regex(r"[0-9]{5}(-[0-9]{4})?", fullmatch=True)
                | short_text,
                "country": st.sampled_from(["US", "deu", "France"]) | short_text,
                "external_id": short_text | st.lists(short_text, max_size=2),
                "click_id": short_text,
                "partner_id": short_text,
            },
        )
    )
    data = others | matching
    if draw(st.booleans()):
        data = {FRIENDLY_TO_WIRE.get(key, key): value for key, value in data.items()}
    return data


content_items = st.fixed_dictionaries(
    {},
    optional={
        "id": identifiers,
        "item_price": money,
        "quantity": int64,
        "item_name": short_text,
        "item_category": short_text,
        "item_brand": short_text,
    },
)
custom_data = st.fixed_dictionaries(
    {},
    optional={
        "currency": currencies,
        "value": money,
        "content_ids": st.lists(identifiers, max_size=3),
        "contents": st.lists(content_items, max_size=3),
        "num_items": int64,
        "order_id": identifiers,
        "search_string": short_text,
        "opt_out_type": st.just("LDP") | short_text,
        "np": short_text,
        "content_name": short_text,
        "content_category": short_text,
        "content_brand": short_text,
        "external_measurement_id": short_text,
        "external_measurement_vendor_id": int64,
        "predicted_ltv": money,
    },
)
screen_pixels = st.integers(min_value=0, max_value=30720)
storage = st.integers(min_value=0, max_value=1048576)
app_info = st.fixed_dictionaries(
    {},
    optional={
        "app_id": st.text(max_size=200),
        "app_name": st.text(max_size=200),
        "app_package_name": st.text(max_size=200),
        "app_store": st.text(max_size=100),
        "app_version": st.text(max_size=100),
        "install_time": st.integers(min_value=0, max_value=NOW)
        | st.datetimes(
            min_value=datetime(1970, 1, 2), max_value=datetime(2030, 1, 1)
        ).map(lambda moment: moment - timedelta(hours=12)),
        "user_agent": st.text(max_size=300),
        "window_height": screen_pixels,
        "window_width": screen_pixels,
    },
)
device_info = st.fixed_dictionaries(
    {},
    optional={
        "battery_level": st.integers(min_value=0, max_value=100),
        "brand": st.text(max_size=100),
        "carrier": st.text(max_size=100),
        "cpu_cores": st.integers(min_value=0, max_value=1152),
        "external_storage_free_space": storage,
        "external_storage_size": storage,
        "form_factor": st.sampled_from(FormFactor),
        "kernel_version": st.text(max_size=100),
        "languages": st.lists(languages, max_size=100),
        "locale": st.text(max_size=35),
        "model": st.text(max_size=100),
        "network_type": st.sampled_from([member.value for member in NetworkType]),
        "os_family": st.sampled_from(OSFamily),
        "os_name": st.text(max_size=100),
        "os_release_name": st.text(max_size=100),
        "os_version": st.text(max_size=100),
        "screen_density": st.integers(min_value=0, max_value=100000),
        "screen_height": screen_pixels,
        "screen_width": screen_pixels,
        "storage_free_space": storage,
        "storage_size": storage,
        "timezone": st.text(max_size=40),
        "timezone_abbr": st.text(max_size=5),
        "type": st.text(max_size=100),
    },
)
events = st.fixed_dictionaries(
    {
        "event_name": st.sampled_from(EventName)
        | st.from_regex(r"[A-Za-z_]+", fullmatch=True),
        "action_source": st.sampled_from([member.value for member in ActionSource]),
        "event_time": event_times,
        "user_data": user_data(),
    },
    optional={
        "event_id": st.text(min_size=1, max_size=40) | st.integers(),
        "custom_data": custom_data,
        "event_source_url": short_text,
        "opt_out": st.booleans(),
        "partner_name": short_text,
        "app_id": short_text,
        "app_name": short_text,
        "app_version": short_text,
        "app_info": app_info,
        "device_brand": short_text,
        "device_carrier": short_text,
        "device_model": short_text,
        "device_type": short_text,
        "os_version": short_text,
        "device_info": device_info,
        "wifi": st.booleans(),
        "language": languages,
    },
)

GENERATED = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@GENERATED
@given(data=events)
def test_generated_event_validates_against_pinterests_schema(data):
    body = body_of(parse_event(data, now=NOW))

    assert schema_violations(body) == []


@GENERATED
@given(data=events)
def test_generated_event_sends_hashed_fields_as_digest_arrays(data):
    assert digest_violations(body_of(parse_event(data, now=NOW))) == []


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(events, min_size=1, max_size=5))
def test_generated_batch_validates_against_pinterests_schema(batch):
    body = body_of(*(parse_event(data, now=NOW) for data in batch))

    assert schema_violations(body) == []
