"""Property tests of the hasher: output shape, idempotence, robustness.

They also prove that the North American phone fast path gives exactly what
phonenumbers gives, for every string the fast path's patterns accept.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import string
import unicodedata
from datetime import date, datetime
from typing import Any

import phonenumbers
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from pinterest_mw import hashing
from pinterest_mw.hashing import (
    HASHED_FIELDS,
    PLAIN_FIELDS,
    USER_DATA_KEYS,
    UnusableValueError,
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
    sha256_hex,
)

LOWER_HEX_64 = re.compile(r"[0-9a-f]{64}")
HASHED_WIRE_CODES = frozenset(HASHED_FIELDS.values())
PLAIN_WIRE_CODES = frozenset(PLAIN_FIELDS.values())
KNOWN_KEYS = sorted(
    {*HASHED_FIELDS, *HASHED_WIRE_CODES, *PLAIN_FIELDS, "ip_address", "user_agent"}
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64),
    st.text(alphabet="0123456789 +-().", max_size=20),
    st.binary(max_size=8),
    st.dates(),
    st.datetimes(),
    st.sampled_from(["a@example.com", "+1 650 555 1212", "Female", "US", "::1"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=5), children, max_size=3),
    ),
    max_leaves=8,
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8))
user_data = st.dictionaries(keys, values, max_size=10)
regions = st.sampled_from([None, "US", "CA", "GB", "DE", "FR", "IN", "BR", "AU", "CO"])


@given(user_data, regions)
def test_hash_user_data_never_raises_and_reports_no_internal_error(data, region):
    """Arbitrary input only ever drops values with a rule's own reason."""
    result = hash_user_data(data, default_region=region)
    assert all(warning.reason != hashing._INTERNAL_ERROR for warning in result.warnings)


@given(user_data, regions)
def test_hashed_fields_are_lists_of_unique_lowercase_sha256_hex(data, region):
    fields = hash_user_data(data, default_region=region).fields
    for wire in HASHED_WIRE_CODES & fields.keys():
        digests = fields[wire]
        assert isinstance(digests, list)
        assert digests
        assert len(set(digests)) == len(digests)
        assert all(LOWER_HEX_64.fullmatch(value) for value in digests)


@given(user_data, regions)
def test_plain_fields_are_non_empty_text(data, region):
    fields = hash_user_data(data, default_region=region).fields
    for wire in PLAIN_WIRE_CODES & fields.keys():
        value = fields[wire]
        assert isinstance(value, str)
        assert value
        assert value == value.strip()


@given(user_data, regions)
def test_hashing_is_idempotent_on_its_own_output(data, region):
    first = hash_user_data(data, default_region=region)
    second = hash_user_data(first.fields, default_region=region)
    assert second.fields == first.fields
    assert second.warnings == ()


# Every fixed text of the module: a reason must be one of them.
FIXED_TEXTS = frozenset(
    value
    for name, value in vars(hashing).items()
    if name.startswith("_") and name.isupper() and isinstance(value, str)
)


@given(st.sampled_from(sorted(KNOWN_KEYS)), st.text(min_size=1))
def test_warning_reasons_are_fixed_texts_never_the_value(key, text):
    raw = f"Zq{text}qZ"
    result = hash_user_data({key: [raw, " " + raw.upper()]})
    for warning in result.warnings:
        assert warning.reason in FIXED_TEXTS
        assert "zq" not in warning.reason.lower()
        assert "zq" not in warning.path.lower()


@given(st.sampled_from(sorted(HASHED_FIELDS)), st.text())
@example("first_name", "Jose\u0301")
@example("city", "S\u0101o Pa\u0301ulo")
def test_composed_and_decomposed_text_give_the_same_result(key, text):
    composed = unicodedata.normalize("NFC", text)
    decomposed = unicodedata.normalize("NFD", text)
    assert hash_user_data({key: decomposed}) == hash_user_data({key: composed})


TEXT_NORMALIZERS = [
    normalize_email,
    normalize_phone,
    normalize_name,
    normalize_gender,
    normalize_date_of_birth,
    normalize_city,
    normalize_state,
    normalize_zip,
    normalize_country,
    normalize_external_id,
    normalize_maid,
    normalize_ip_address,
]


@pytest.mark.parametrize(
    "normalize", TEXT_NORMALIZERS, ids=lambda function: function.__name__
)
@given(value=st.one_of(st.text(), st.text(alphabet=string.printable)))
def test_normalizer_returns_text_or_raises_unusable_value_error(normalize, value):
    try:
        result = normalize(value)
    except UnusableValueError:
        return
    assert isinstance(result, str)
    assert result


@pytest.mark.parametrize(
    "normalize",
    [normalize_email, normalize_name, normalize_city, normalize_state, normalize_zip],
    ids=lambda function: function.__name__,
)
@given(value=st.text())
def test_normalizer_is_idempotent(normalize, value):
    try:
        once = normalize(value)
    except UnusableValueError:
        return
    assert normalize(once) == once


# The phone fast path against phonenumbers itself.


def phonenumbers_digits(text: str, region: str | None) -> str:
    """E.164 digits computed with phonenumbers alone, as the policy reads it.

    A leading `00` is the international prefix where the fast path takes
    it (see `_reads_00_as_plus`), so it becomes `+` before phonenumbers
    sees the text.
    """
    if text.startswith("00"):
        text = "+" + text[2:]
    number = phonenumbers.parse(text, None if text.startswith("+") else region)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]


@given(st.from_regex(hashing._NANP_INTERNATIONAL, fullmatch=True), regions)
@example("+1 (650) 555-1212", None)
@example("001-200-000-0000", "GB")
@example("+1 999 999 9999", "US")
def test_international_nanp_fast_path_equals_phonenumbers(text, region):
    """Outside North America, 00 is left to phonenumbers where the region
    dials abroad with a longer prefix (Brazil's 0012, 0014, ...)."""
    assume(text.startswith("+") or hashing._reads_00_as_plus(region))
    fast = hashing._nanp_fast_path(text, region)
    assert fast is not None
    assert fast == phonenumbers_digits(text, region)
    assert normalize_phone(text, region) == fast


@given(
    st.from_regex(hashing._NANP_NATIONAL, fullmatch=True),
    st.sampled_from(["US", "CA"]),
)
@example("(650) 555-1212", "US")
@example("1 200 000 0000", "CA")
@example("2000000000", "US")
def test_national_nanp_fast_path_equals_phonenumbers(text, region):
    fast = hashing._nanp_fast_path(text, region)
    assert fast is not None
    assert fast == phonenumbers_digits(text, region)
    assert normalize_phone(text, region) == fast


def slow_path(text: str, region: str | None) -> tuple[str, str]:
    """The phonenumbers path without its cache: `(digits, reason)`."""
    result: tuple[str, str] = hashing._phone_slow_path.__wrapped__(text, region)
    return result


phone_like = st.one_of(
    st.text(alphabet="0123456789 +-().", max_size=22),
    st.builds(
        lambda prefix, digits: prefix + digits,
        st.sampled_from(["+1", "+1 ", "001", "1", "", "+", "00", "+44"]),
        st.text(alphabet="0123456789", min_size=9, max_size=12),
    ),
)


@given(phone_like, regions)
@example("+1 (150) 555-1212", None)
@example("1 (050) 555-1212", "US")
@example("+1 1 650 555 1212", None)
def test_fast_path_never_disagrees_with_the_phonenumbers_path(text, region):
    """Wherever the fast path answers, the full path gives the same digits."""
    fast = hashing._nanp_fast_path(text, region)
    if fast is not None:
        assert slow_path(text, region) == (fast, "")


@given(phone_like, regions)
def test_normalize_phone_equals_the_uncached_path(text, region):
    stripped = text.strip()
    assume(stripped)
    digits, reason = slow_path(stripped, region)
    if digits:
        assert normalize_phone(text, region) == digits
    else:
        with pytest.raises(UnusableValueError, match=re.escape(reason)):
            normalize_phone(text, region)


# The IPv4 fast path against ipaddress itself.


@given(st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){3}", fullmatch=True))
@example("0.0.0.0")
@example("255.255.255.255")
@example("256.1.1.1")
@example("01.2.3.4")
def test_dotted_quad_is_read_as_ipaddress_reads_it(text):
    try:
        expected = str(ipaddress.ip_address(text))
    except ValueError:
        with pytest.raises(UnusableValueError):
            normalize_ip_address(text)
    else:
        assert normalize_ip_address(text) == expected


@given(
    st.one_of(st.ip_addresses(), st.text(alphabet="0123456789abcdef.:[]%", max_size=45))
)
def test_normalized_ip_address_is_canonical(value):
    try:
        result = normalize_ip_address(str(value))
    except UnusableValueError:
        return
    assert str(ipaddress.ip_address(result)) == result


def test_property_strategies_cover_dates_and_datetimes():
    """The robustness properties feed date objects, which only db accepts."""
    result = hash_user_data(
        {"db": [date(2000, 1, 2), datetime(2000, 1, 2, 3, 4)], "fn": date.today()}
    )
    fields: dict[str, Any] = result.fields
    assert len(fields["db"]) == 1
    assert [warning.path for warning in result.warnings] == ["user_data.fn"]


# hash_user_data handles one text under one spelling inline, for speed; the
# general path handles lists, other types and merged spellings. Both must
# give the same fields and the same warnings for every input.

field_texts = st.one_of(
    st.text(max_size=24),
    st.text(alphabet=string.printable, max_size=24),
    phone_like,
    st.from_regex(r"[0-9]{5}([ -]?[0-9]{4})?", fullmatch=True),
    st.text(alphabet="0123456789abcdefABCDEF \t", min_size=64, max_size=66),
    st.ip_addresses().map(str),
    st.sampled_from(
        [
            " Ann.Buyer@Example.com ",
            "+1 (650) 555-0134",
            "(650) 555-0134",
            "020 7946 0958",
            "7946 0958",
            "Female",
            "non-binary",
            "1997-03-14",
            "03/04/1997",
            "São Paulo",
            "New York",
            "Québec",
            "94025-1234",
            "SW1A 1AA",
            "United States",
            "The Netherlands",
            "Russia",
            "203.0.113.9:443",
            "[2001:db8::1]:443",
            "Jose\u0301",
            "",
            "   ",
        ]
    ),
)


@settings(deadline=None)
@given(st.sampled_from(KNOWN_KEYS), field_texts, regions)
@example("phone", "(650) 555-0134", None)
@example("country", "Russia", None)
@example("client_ip_address", "203.0.113.9:443", None)
def test_single_text_gives_what_a_one_item_list_gives(key, text, region):
    """The inline path for one text equals the general path for a list."""
    alone = hash_user_data({key: text}, default_region=region)
    listed = hash_user_data({key: [text]}, default_region=region)

    assert alone.fields == listed.fields
    assert alone.warnings == tuple(
        dataclasses.replace(warning, path=warning.path.removesuffix(".0"))
        for warning in listed.warnings
    )


NORMALIZER_BY_WIRE_CODE = {
    "em": normalize_email,
    "fn": normalize_name,
    "ln": normalize_name,
    "ge": normalize_gender,
    "db": normalize_date_of_birth,
    "ct": normalize_city,
    "st": normalize_state,
    "zp": normalize_zip,
    "country": normalize_country,
    "external_id": normalize_external_id,
    "hashed_maids": normalize_maid,
}


def expected_fields(key: str, text: str, region: str | None) -> dict[str, Any]:
    """What the policy says one text gives, built from the public normalizers."""
    wire = USER_DATA_KEYS[key]
    try:
        if wire == "client_ip_address":
            return {wire: normalize_ip_address(text)}
        if wire in PLAIN_WIRE_CODES:
            return {wire: text.strip()} if text.strip() else {}
        if is_sha256_hex(text.strip()):
            return {wire: [text.strip().lower()]}
        if wire == "ph":
            return {wire: [sha256_hex(normalize_phone(text, region))]}
        return {wire: [sha256_hex(NORMALIZER_BY_WIRE_CODE[wire](text))]}
    except UnusableValueError:
        return {}


@settings(deadline=None)
@given(st.sampled_from(KNOWN_KEYS), field_texts, regions)
@example("zip_code", "12345 6789", None)
@example("hashed_maids", "A" * 64, None)
def test_hash_user_data_equals_the_public_normalizers(key, text, region):
    """Every shortcut inside the hasher gives what the normalizers give."""
    result = hash_user_data({key: text}, default_region=region)

    assert result.fields == expected_fields(key, text, region)
