"""Golden vectors and behaviour of the personal-data normalizer and hasher.

Every expected digest is computed here with hashlib over the expected
normalized text, never with the module's own `sha256_hex`, so a bug in the
module cannot hide itself in the expectation.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import unicodedata
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from _helpers import HUGE

from pinterest_mw import hashing
from pinterest_mw.exceptions import ConfigurationError
from pinterest_mw.hashing import (
    HASHED_FIELDS,
    PLAIN_FIELDS,
    FieldWarning,
    HashedUserData,
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
    sha256_hex,
)


def digest(normalized: str) -> str:
    """The SHA-256 hex Pinterest expects for an already normalized text."""
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def hashed(key: str, value: object, **options: Any) -> list[str]:
    """Hash one field and return the digests sent under its wire code."""
    fields = hash_user_data({key: value}, **options).fields
    wire = HASHED_FIELDS.get(key, key)
    result = fields.get(wire, [])
    assert isinstance(result, list)
    return result


def reasons(result: HashedUserData) -> list[str]:
    return [warning.reason for warning in result.warnings]


A_DIGEST = digest("a@example.com")

# (friendly key, raw value, options, expected normalized text)
GOLDEN: list[tuple[str, object, dict[str, Any], str]] = [
    # em: trim and lowercase; dots, +tags and non-ASCII local parts are kept.
    ("email", " John.Doe+Tag@Example.COM ", {}, "john.doe+tag@example.com"),
    ("email", "first.last@gmail.com", {}, "first.last@gmail.com"),
    ("email", "JÖRG@Bücher.DE", {}, "jörg@bücher.de"),
    # ph: E.164 digits without +, from +, 00, or the default region.
    ("phone", "+1 (650) 555-1212", {}, "16505551212"),
    ("phone", "+16505551212", {}, "16505551212"),
    ("phone", "001-650-555-1212", {}, "16505551212"),
    ("phone", "650.555.1212", {"default_region": "US"}, "16505551212"),
    ("phone", "1 (650) 555-1212", {"default_region": "us"}, "16505551212"),
    ("phone", "(416) 555-0199", {"default_region": "CA"}, "14165550199"),
    ("phone", "+44 (0)20 7946 0958", {}, "442079460958"),
    ("phone", "0044 20 7946 0958", {"default_region": "US"}, "442079460958"),
    # The region's own international prefix, read by phonenumbers (#2).
    ("phone", "0011 44 20 7946 0958", {"default_region": "AU"}, "442079460958"),
    ("phone", "0011 1 650 555 1212", {"default_region": "AU"}, "16505551212"),
    ("phone", "0021 1 650 555 1212", {"default_region": "BR"}, "16505551212"),
    ("phone", "005 44 20 7946 0958", {"default_region": "CO"}, "442079460958"),
    ("phone", "011 44 20 7946 0958", {"default_region": "US"}, "442079460958"),
    # 00 where the region dials abroad otherwise still gives the country.
    ("phone", "00 44 20 7946 0958", {"default_region": "AU"}, "442079460958"),
    ("phone", "0033 1 23 45 67 89", {"default_region": "BR"}, "33123456789"),
    ("phone", "020 7946 0958", {"default_region": "GB"}, "442079460958"),
    ("phone", "07700 900123", {"default_region": "GB"}, "447700900123"),
    ("phone", "0800 1111", {"default_region": "GB"}, "448001111"),
    ("phone", "+49 (0)30 1234567", {}, "49301234567"),
    ("phone", "+39 06 1234 5678", {}, "390612345678"),
    ("phone", "tel:+1-650-555-1212", {}, "16505551212"),
    ("phone", "+1 650 555 1212 ext. 99", {}, "16505551212"),
    ("phone", "+1-800-FLOWERS", {}, "18003569377"),
    ("phone", "(650) 555-1212", {}, "6505551212"),
    ("phone", "0650 555 1212", {}, "6505551212"),
    ("phone", 16505551212, {}, "16505551212"),
    ("phone", 6505551212, {"default_region": "US"}, "16505551212"),
    # fn, ln: trim, lowercase, NFC; inner spaces, hyphens, apostrophes kept.
    ("first_name", "  Mary-Jane ", {}, "mary-jane"),
    ("first_name", "Anne Marie", {}, "anne marie"),
    ("first_name", "JOSÉ", {}, "josé"),
    ("last_name", "O'Brien", {}, "o'brien"),
    ("last_name", "Müller-Lüdenscheidt", {}, "müller-lüdenscheidt"),
    # ge: f, m or n from common spellings.
    ("gender", "Female", {}, "f"),
    ("gender", "WOMAN", {}, "f"),
    ("gender", "f", {}, "f"),
    ("gender", " Male ", {}, "m"),
    ("gender", "man", {}, "m"),
    ("gender", "M", {}, "m"),
    ("gender", "Non-Binary", {}, "n"),
    ("gender", "nonbinary", {}, "n"),
    ("gender", "non binary", {}, "n"),
    ("gender", "Other", {}, "n"),
    ("gender", "N", {}, "n"),
    # db: YYYYMMDD from dates, ISO text, compact text, or a named format.
    ("date_of_birth", date(1997, 3, 14), {}, "19970314"),
    ("date_of_birth", datetime(1997, 3, 14, 23, 59), {}, "19970314"),
    (
        "date_of_birth",
        datetime(1997, 3, 14, 23, 59, tzinfo=timezone(timedelta(hours=-5))),
        {},
        "19970314",
    ),
    ("date_of_birth", date(999, 1, 2), {}, "09990102"),
    ("date_of_birth", "1997-03-14", {}, "19970314"),
    ("date_of_birth", " 19970314 ", {}, "19970314"),
    ("date_of_birth", 19970314, {}, "19970314"),
    ("date_of_birth", "14/03/1997", {"date_format": "%d/%m/%Y"}, "19970314"),
    ("date_of_birth", "03/04/1997", {"date_format": "%m/%d/%Y"}, "19970304"),
    ("date_of_birth", "14 March 1997", {"date_format": "%d %B %Y"}, "19970314"),
    ("date_of_birth", "1997-03-14", {"date_format": "%d/%m/%Y"}, "19970314"),
    # ct: lowercase, no spaces or punctuation, accents kept.
    ("city", "Menlo Park", {}, "menlopark"),
    ("city", "São Paulo", {}, "sãopaulo"),
    ("city", "St. John's", {}, "stjohns"),
    ("city", "Winston-Salem", {}, "winstonsalem"),
    ("city", "Zürich", {}, "zürich"),
    ("city", "नई दिल्ली", {}, "नईदिल्ली"),
    # st: two-letter codes for US and Canadian names, letters otherwise.
    ("state", "CA", {}, "ca"),
    ("state", "California", {}, "ca"),
    ("state", "new york", {}, "ny"),
    ("state", "NEW-YORK", {}, "ny"),
    ("state", "N.Y.", {}, "ny"),
    ("state", "District of Columbia", {}, "dc"),
    ("state", "Puerto Rico", {}, "pr"),
    ("state", "Québec", {}, "qc"),
    ("state", "Quebec", {}, "qc"),
    ("state", "British Columbia", {}, "bc"),
    ("state", "US-TX", {}, "tx"),
    ("state", "Bavaria", {}, "bavaria"),
    # Full-width (compatibility) forms, as East Asian keyboards type them.
    ("state", "\uff23\uff21", {}, "ca"),
    ("state", "\uff43\uff41", {}, "ca"),
    ("state", "\uff2e\uff39", {}, "ny"),
    ("state", "\uff23\uff41\uff4c\uff49\uff46\uff4f\uff52\uff4e\uff49\uff41", {}, "ca"),
    # zp: five digits for US ZIP and ZIP+4; other postcodes lowercase, no
    # spaces or punctuation.
    ("zip_code", "94025", {}, "94025"),
    ("zip_code", "02134", {}, "02134"),
    ("zip_code", "94025-1234", {}, "94025"),
    ("zip_code", "94025 1234", {}, "94025"),
    ("zip_code", "940251234", {}, "94025"),
    ("zip_code", "94025 - 1234", {}, "94025"),
    ("zip_code", "94025\u20131234", {}, "94025"),
    ("zip_code", "94025.1234", {}, "94025"),
    ("zip_code", 94025, {}, "94025"),
    ("zip_code", "SW1A 1AA", {}, "sw1a1aa"),
    ("zip_code", "K1A 0B1", {}, "k1a0b1"),
    ("zip_code", "1010", {}, "1010"),
    ("zip_code", "01310-100", {}, "01310100"),
    ("zip_code", "\uff19\uff14\uff10\uff12\uff15", {}, "94025"),
    (
        "zip_code",
        "\uff19\uff14\uff10\uff12\uff15\uff0d\uff11\uff12\uff13\uff14",
        {},
        "94025",
    ),
    ("zip_code", "\uff11\uff10\uff10\uff0d\uff10\uff10\uff10\uff11", {}, "1000001"),
    ("zip_code", "\uff33\uff37\uff11\uff21\u3000\uff11\uff21\uff21", {}, "sw1a1aa"),
    # country: ISO 3166-1 alpha-2, lowercase, from codes and English names.
    ("country", "US", {}, "us"),
    ("country", "usa", {}, "us"),
    ("country", "United States", {}, "us"),
    ("country", "United States of America", {}, "us"),
    ("country", "DEU", {}, "de"),
    ("country", "Germany", {}, "de"),
    ("country", "South Korea", {}, "kr"),
    ("country", "Korea, Republic of", {}, "kr"),
    ("country", "Côte d'Ivoire", {}, "ci"),
    ("country", "Cote d'Ivoire", {}, "ci"),
    ("country", "UK", {}, "gb"),
    ("country", "United Kingdom", {}, "gb"),
    ("country", "Great Britain", {}, "gb"),
    ("country", "Russia", {}, "ru"),
    ("country", "Russian Federation", {}, "ru"),
    ("country", "Turkey", {}, "tr"),
    ("country", "Cape Verde", {}, "cv"),
    ("country", "The Netherlands", {}, "nl"),
    ("country", "Holland", {}, "nl"),
    ("country", "U.S.", {}, "us"),
    ("country", "U.S.A.", {}, "us"),
    # external_id: trim, lowercase.
    ("external_id", " User-ABC-123 ", {}, "user-abc-123"),
    ("external_id", 12345, {}, "12345"),
    # hashed_maids: trim, lowercase, hyphens kept.
    (
        "hashed_maids",
        " 6D92078A-8246-4BA4-AE5B-76104861E7DC ",
        {},
        "6d92078a-8246-4ba4-ae5b-76104861e7dc",
    ),
]

NORMALIZERS = {
    "email": normalize_email,
    "phone": normalize_phone,
    "first_name": normalize_name,
    "last_name": normalize_name,
    "gender": normalize_gender,
    "date_of_birth": normalize_date_of_birth,
    "city": normalize_city,
    "state": normalize_state,
    "zip_code": normalize_zip,
    "country": normalize_country,
    "external_id": normalize_external_id,
    "hashed_maids": normalize_maid,
}


@pytest.mark.parametrize(("key", "raw", "options", "expected"), GOLDEN)
def test_golden_vector_hash(key, raw, options, expected):
    """hash_user_data sends SHA-256 of the normalized text under the wire code."""
    assert hashed(key, raw, **options) == [digest(expected)]


@pytest.mark.parametrize(("key", "raw", "options", "expected"), GOLDEN)
def test_golden_vector_normalizer(key, raw, options, expected):
    """The field's own normalize_* function gives the same normalized text."""
    assert NORMALIZERS[key](raw, **options) == expected


def test_every_hashed_field_has_golden_vectors():
    assert {key for key, *_ in GOLDEN} == set(HASHED_FIELDS)


@pytest.mark.parametrize(
    ("key", "composed"),
    [
        ("first_name", "José"),
        ("last_name", "Gonçalves"),
        ("email", "josé@exämple.com"),
        ("city", "São Paulo"),
        ("state", "Québec"),
        ("country", "Côte d'Ivoire"),
        ("external_id", "Ñandú-7"),
    ],
)
def test_composed_and_decomposed_input_give_the_same_digest(key, composed):
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert hashed(key, decomposed) == hashed(key, composed) != []


@pytest.mark.parametrize(
    ("key", "full_width", "ascii_form"),
    [
        ("zip_code", "\uff19\uff14\uff10\uff12\uff15", "94025"),
        ("zip_code", "\uff11\uff10\uff10\uff0d\uff10\uff10\uff10\uff11", "100-0001"),
        ("state", "\uff23\uff21", "CA"),
    ],
)
def test_full_width_zip_and_state_hash_like_their_ascii_form(
    key, full_width, ascii_form
):
    assert hashed(key, full_width) == hashed(key, ascii_form) != []


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("first_name", "\uff21\uff4e\uff4e", "\uff41\uff4e\uff4e"),
        ("last_name", "\ufb01nch", "\ufb01nch"),
        ("city", "\uff34\uff4f\uff4b\uff59\uff4f", "\uff54\uff4f\uff4b\uff59\uff4f"),
    ],
)
def test_names_and_cities_keep_compatibility_forms(key, raw, expected):
    """Names and cities follow the policy's NFC rule, not NFKC: see hashing."""
    assert hashed(key, raw) == [digest(expected)]


def test_decomposed_name_is_hashed_in_composed_form():
    assert hashed("first_name", "Jose\u0301") == [digest("jos\u00e9")]


def test_city_is_composed_again_after_punctuation_is_removed():
    """Dropping the hyphen brings e and the accent together: they compose."""
    assert normalize_city("Cafe-\u0301") == "caf\u00e9"


@pytest.mark.parametrize("key", sorted(HASHED_FIELDS))
@pytest.mark.parametrize("case", [str.lower, str.upper])
def test_already_hashed_value_is_lowercased_and_passed_through(key, case):
    raw = case(digest("anything at all"))
    assert hashed(key, f"  {raw}\n") == [digest("anything at all")]


@pytest.mark.parametrize("key", sorted(HASHED_FIELDS))
def test_already_hashed_value_in_a_list_is_passed_through(key):
    raw = digest("x").upper()
    assert hashed(key, [raw, "\t" + raw.lower()]) == [digest("x")]


@pytest.mark.parametrize("key", sorted(HASHED_FIELDS))
def test_wire_code_and_friendly_name_are_both_accepted(key):
    wire = HASHED_FIELDS[key]
    value = digest("same")
    by_name = hash_user_data({key: value}).fields
    by_wire = hash_user_data({wire: value}).fields
    assert by_name == by_wire == {wire: [value]}


@pytest.mark.parametrize(
    ("key", "raw"),
    [(key, raw) for key in sorted(HASHED_FIELDS) for raw in ("", "   ", "\u3000\t\n")]
    + [
        ("city", " .,- "),
        ("zip_code", " - "),
        ("state", "..."),
        ("external_id", "  "),
    ],
)
def test_value_empty_after_normalization_is_dropped_with_a_warning(key, raw):
    result = hash_user_data({key: raw})
    assert HASHED_FIELDS[key] not in result.fields
    assert result.warnings == (FieldWarning(f"user_data.{key}", hashing._EMPTY),)


def test_duplicates_in_a_list_are_removed_keeping_order():
    raw = ["B@example.com", " a@example.com", "b@example.com", A_DIGEST.upper()]
    assert hashed("email", raw) == [digest("b@example.com"), A_DIGEST]


def test_tuple_of_values_is_accepted_like_a_list():
    assert hashed("email", ("a@example.com", "c@example.com")) == [
        A_DIGEST,
        digest("c@example.com"),
    ]


def test_friendly_name_and_wire_code_values_are_merged():
    result = hash_user_data(
        {"email": "a@example.com", "em": ["c@example.com", "A@EXAMPLE.COM"]}
    )
    assert result.fields == {"em": [A_DIGEST, digest("c@example.com")]}


def test_merged_field_keeps_its_first_position():
    result = hash_user_data(
        {"em": "a@example.com", "fn": "Ann", "email": "c@example.com"}
    )
    assert list(result.fields) == ["em", "fn"]


def test_multi_value_list_warns_per_bad_item_with_its_index():
    result = hash_user_data({"em": ["a@example.com", "nope", None, b"x"]})
    assert result.fields == {"em": [A_DIGEST]}
    assert [warning.path for warning in result.warnings] == [
        "user_data.em.1",
        "user_data.em.3",
    ]


def test_none_means_absent_without_a_warning():
    result = hash_user_data({"email": None, "phone": [None], "click_id": None})
    assert result == HashedUserData({}, ())


def test_empty_list_gives_no_field_and_no_warning():
    assert hash_user_data({"email": []}) == HashedUserData({}, ())


@pytest.mark.parametrize(
    ("key", "raw", "reason"),
    [
        ("email", "john.doe", hashing._NOT_AN_EMAIL),
        ("email", "@example.com", hashing._NOT_AN_EMAIL),
        ("email", "john@", hashing._NOT_AN_EMAIL),
        ("email", "a@b@example.com", hashing._NOT_AN_EMAIL),
        ("email", "john doe@example.com", hashing._NOT_AN_EMAIL),
        ("email", "john\tdoe@example.com", hashing._NOT_AN_EMAIL),
        ("gender", "unknown", hashing._UNKNOWN_GENDER),
        ("gender", "fem", hashing._UNKNOWN_GENDER),
        ("date_of_birth", "03/04/1997", hashing._AMBIGUOUS_DATE),
        ("date_of_birth", "March 14, 1997", hashing._AMBIGUOUS_DATE),
        ("date_of_birth", "1997-3-14", hashing._AMBIGUOUS_DATE),
        ("date_of_birth", "1997-02-30", hashing._NOT_A_DATE),
        ("date_of_birth", "19971301", hashing._NOT_A_DATE),
        ("date_of_birth", 123, hashing._AMBIGUOUS_DATE),
        ("country", "Atlantis", hashing._UNKNOWN_COUNTRY),
        ("country", "xx", hashing._UNKNOWN_COUNTRY),
        ("country", "Deutschland", hashing._UNKNOWN_COUNTRY),
        ("country", "Korea", hashing._UNKNOWN_COUNTRY),
        ("country", "The Atlantis", hashing._UNKNOWN_COUNTRY),
        ("phone", "+44 7946 0958", hashing._PHONE_INCOMPLETE),
        ("phone", "0044 7946 0958", hashing._PHONE_INCOMPLETE),
        # Read as +11 44 ...: the 00 of 0011 gives no country code (#2).
        ("phone", "0011 44 20 7946 0958", hashing._PHONE_TOO_LONG_FOR_COUNTRY),
        ("phone", "+1 650 555 1212 999", hashing._PHONE_TOO_LONG_FOR_COUNTRY),
        ("phone", "12345", hashing._PHONE_TOO_SHORT),
        ("phone", "+1 555", hashing._PHONE_TOO_SHORT),
        ("phone", "1234567890123456", hashing._PHONE_TOO_LONG),
        ("phone", "+999 1234567", hashing._PHONE_UNPARSABLE),
        ("phone", "hello", hashing._PHONE_NEEDS_REGION),
        ("phone", "+0 650 555 1212", hashing._PHONE_UNPARSABLE),
        ("phone", "650 555 1212 ext 9", hashing._PHONE_NEEDS_REGION),
        ("phone", "1" * 251, hashing._PHONE_TOO_LONG),
    ],
)
def test_value_the_rule_cannot_use_is_dropped_with_its_reason(key, raw, reason):
    result = hash_user_data({key: raw})
    assert result.fields == {}
    assert reasons(result) == [reason]


LONE_SURROGATE = "Ann\ud800"


@pytest.mark.parametrize("key", sorted(HASHED_FIELDS))
@pytest.mark.parametrize(
    "shape", [lambda value: value, lambda value: [value]], ids=["one", "list"]
)
def test_text_with_a_lone_surrogate_is_dropped_with_its_reason(key, shape, caplog):
    """Such text has no UTF-8 bytes to hash: it is unusable, not a bug."""
    caplog.set_level(logging.DEBUG, logger="pinterest_mw")

    result = hash_user_data({key: shape(LONE_SURROGATE)})

    assert result.fields == {}
    assert reasons(result) == [hashing._NOT_UNICODE]
    assert caplog.records == []


def test_normalizers_refuse_text_with_a_lone_surrogate():
    with pytest.raises(UnusableValueError, match="surrogate"):
        normalize_name(LONE_SURROGATE)


@pytest.mark.parametrize(
    "key",
    ["phone", "date_of_birth", "zip_code", "external_id", "click_id", "partner_id"],
)
@pytest.mark.parametrize(
    "shape", [lambda value: value, lambda value: [value]], ids=["one", "list"]
)
def test_an_integer_too_long_to_write_out_is_dropped_with_its_reason(
    key, shape, caplog
):
    caplog.set_level(logging.DEBUG, logger="pinterest_mw")

    result = hash_user_data({key: shape(HUGE)})

    assert result.fields == {}
    assert reasons(result) == [hashing._INTEGER_TOO_LONG]
    assert caplog.records == []


def test_an_integer_of_64_digits_is_still_read():
    assert hash_user_data({"click_id": 10**64 - 1}).fields == {"click_id": "9" * 64}


def test_ambiguous_date_is_dropped_unless_a_format_is_named():
    assert hashed("date_of_birth", "03/04/1997") == []
    assert hashed("date_of_birth", "03/04/1997", date_format="%d/%m/%Y") == [
        digest("19970403")
    ]


def test_date_not_matching_the_named_format_is_dropped():
    result = hash_user_data({"db": "31/02/1997"}, date_format="%d/%m/%Y")
    assert reasons(result) == [hashing._AMBIGUOUS_DATE]


def test_the_ambiguous_date_reason_names_no_python_parameter():
    """CLI users set it with --date-format, not date_format (#2)."""
    [reason] = reasons(hash_user_data({"db": "03/04/1997"}))

    assert (
        reason == "not a YYYY-MM-DD or YYYYMMDD date; set a date format for other forms"
    )


UNUSABLE_DATE_FORMATS = [
    pytest.param("%Q/%m/%Y", id="bad-directive"),
    pytest.param("%d/%m", id="no-year"),
    pytest.param("%m/%Y", id="no-day"),
    pytest.param("%H:%M", id="no-date"),
    pytest.param("%Y-%Y", id="repeated"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("date_format", UNUSABLE_DATE_FORMATS)
def test_an_unusable_date_format_is_a_configuration_error(date_format):
    """Every birth date would be dropped (or wrong): it fails at once (#2)."""
    with pytest.raises(ConfigurationError, match=r"^date_format must be"):
        hash_user_data({"em": "a@example.com"}, date_format=date_format)


@pytest.mark.parametrize("date_format", UNUSABLE_DATE_FORMATS)
def test_normalize_date_of_birth_refuses_an_unusable_date_format(date_format):
    with pytest.raises(ConfigurationError, match=r"^date_format must be"):
        normalize_date_of_birth(date(1997, 3, 14), date_format)


@pytest.mark.parametrize(
    ("date_format", "text"),
    [
        ("%d.%m.%y", "14.03.97"),
        ("%j/%Y", "073/1997"),
        ("%A %d %B %Y", "Friday 14 March 1997"),
        ("%Y-%m-%dT%H:%M", "1997-03-14T09:30"),
    ],
)
def test_a_date_format_that_reads_a_whole_date_is_usable(date_format, text):
    assert normalize_date_of_birth(text, date_format) == "19970314"


def test_phone_without_country_code_or_region_keeps_digits_without_zeros():
    assert normalize_phone("0650-555-1212") == "6505551212"


@pytest.mark.parametrize("raw", ["(650) 555-1212", "0650-555-1212", 6505551212])
def test_phone_without_country_code_or_region_is_hashed_with_a_warning(raw):
    """The digits are a guess: the caller is told, without the number."""
    result = hash_user_data({"phone": raw})
    assert result.fields == {"ph": [digest("6505551212")]}
    assert result.warnings == (
        FieldWarning("user_data.phone", hashing._PHONE_NO_COUNTRY, dropped=False),
    )


def test_a_dropped_value_is_marked_dropped():
    result = hash_user_data({"email": "not-an-email", "phone": "12345"})
    assert [warning.dropped for warning in result.warnings] == [True, True]


def test_phone_list_without_country_code_warns_per_item_and_keeps_them():
    result = hash_user_data({"ph": ["+1 650 555 1212", "0650 555 1213"]})
    assert result.fields == {"ph": [digest("16505551212"), digest("6505551213")]}
    assert result.warnings == (
        FieldWarning("user_data.ph.1", hashing._PHONE_NO_COUNTRY, dropped=False),
    )


@pytest.mark.parametrize(
    "raw", ["+1 650 555 1212", "0044 20 7946 0958", "+44 (0)20 7946 0958"]
)
def test_phone_with_country_code_and_no_region_gives_no_warning(raw):
    assert hash_user_data({"phone": raw}).warnings == ()


def test_phone_with_a_default_region_gives_no_warning():
    result = hash_user_data({"phone": "(650) 555-1212"}, default_region="US")
    assert result.fields == {"ph": [digest("16505551212")]}
    assert result.warnings == ()


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("7946 0958", "GB"),
        ("96098", "GB"),
        ("555 1212", "US"),
        ("555-1212", "CA"),
        ("+44 7946 0958", None),
    ],
)
def test_local_number_without_its_area_code_is_dropped(raw, region):
    """A country code in front of a local-only number is nobody's number."""
    result = hash_user_data({"phone": raw}, default_region=region)
    assert result.fields == {}
    assert reasons(result) == [hashing._PHONE_INCOMPLETE]


def test_phone_default_region_does_not_override_an_explicit_country_code():
    assert normalize_phone("+44 20 7946 0958", "US") == "442079460958"


def test_phone_with_double_zero_prefix_ignores_the_region_exit_code():
    """phonenumbers alone would read 00 as a national number in the US."""
    assert normalize_phone("0044 20 7946 0958", "US") == "442079460958"


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        pytest.param("0011 44 7946 0958", "AU", id="idd-local-number"),
        pytest.param("001 650 555 1212", "AU", id="carrier-idd-0016"),
    ],
)
def test_a_number_the_regions_international_prefix_makes_unusable_is_dropped(
    raw, region
):
    """Reading its digits another way would only find somebody else's number."""
    result = hash_user_data({"phone": raw}, default_region=region)

    assert result.fields == {}
    assert reasons(result) == [hashing._PHONE_INCOMPLETE]


@pytest.mark.parametrize(
    ("raw", "region"),
    [("0011 44 20 7946 0958", "AU"), ("00 44 20 7946 0958", "AU")],
)
def test_the_phone_fast_path_leaves_a_longer_international_prefix_alone(raw, region):
    assert normalize_phone(raw, region) == "442079460958"
    assert hashing._nanp_fast_path("001 650 555 1212", region) is None


@pytest.mark.parametrize("region", ["XX", "", "USA", 1])
def test_unknown_default_region_is_a_configuration_error(region):
    with pytest.raises(ConfigurationError, match="default_region"):
        hash_user_data({"phone": "+1 650 555 1212"}, default_region=region)


def test_region_error_does_not_repeat_the_value():
    with pytest.raises(ConfigurationError) as info:
        check_default_region("Zebediah")
    assert "zebediah" not in str(info.value).lower()


@pytest.mark.parametrize(
    ("region", "expected"), [(None, None), ("US", "US"), ("gb", "GB"), (" de ", "DE")]
)
def test_check_default_region_returns_the_code_uppercased(region, expected):
    assert check_default_region(region) == expected


@pytest.mark.parametrize("region", ["XX", "", "USA", "U", 44, b"US", True])
def test_check_default_region_refuses_what_phonenumbers_does_not_know(region):
    with pytest.raises(ConfigurationError, match="default_region"):
        check_default_region(region)


def test_date_format_that_is_not_text_is_a_configuration_error():
    with pytest.raises(TypeError, match="date_format"):
        hash_user_data({}, date_format=b"%Y")  # type: ignore[arg-type]


def test_normalize_phone_rejects_an_unknown_region():
    with pytest.raises(ConfigurationError, match="default_region"):
        normalize_phone("650 555 1212", "ZZZ")


BAD_TYPES = [b"a@example.com", bytearray(b"x"), 1.5, True, {"a": 1}, {1}, object()]


@pytest.mark.parametrize("key", sorted(HASHED_FIELDS))
@pytest.mark.parametrize("raw", BAD_TYPES, ids=lambda raw: type(raw).__name__)
def test_value_of_an_unsupported_type_is_dropped_with_a_warning(key, raw):
    result = hash_user_data({key: raw})
    assert result.fields == {}
    assert reasons(result) == [f"unsupported value type {type(raw).__name__}"]


@pytest.mark.parametrize("key", ["email", "first_name", "gender", "city", "state"])
def test_integer_is_refused_where_a_text_is_expected(key):
    assert reasons(hash_user_data({key: 7})) == ["unsupported value type int"]


@pytest.mark.parametrize("raw", [date(2000, 1, 1), datetime(2000, 1, 1, 12)])
def test_date_objects_are_refused_outside_date_of_birth(raw):
    result = hash_user_data({"first_name": raw})
    assert result.fields == {}
    assert reasons(result) == [f"unsupported value type {type(raw).__name__}"]


@pytest.mark.parametrize(
    "normalize", list(NORMALIZERS.values()), ids=lambda function: function.__name__
)
def test_normalizer_raises_unusable_value_error_for_a_bad_type(normalize):
    with pytest.raises(UnusableValueError, match="unsupported value type bytes"):
        normalize(b"secret")


def test_unusable_value_error_is_a_value_error():
    assert issubclass(UnusableValueError, ValueError)


# Plain fields: validated and trimmed, never hashed.


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        (" 203.0.113.9 ", "203.0.113.9"),
        ("203.0.113.9:8080", "203.0.113.9"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("fe80::1%eth0", "fe80::1"),
        (ipaddress.ip_address("198.51.100.7"), "198.51.100.7"),
        (ipaddress.ip_address("2001:db8::7"), "2001:db8::7"),
        (ipaddress.ip_address("fe80::7%eth0"), "fe80::7"),
    ],
)
def test_client_ip_address_is_validated_and_canonical(raw, expected):
    assert normalize_ip_address(raw) == expected
    assert hash_user_data({"client_ip_address": raw}).fields == {
        "client_ip_address": expected
    }


@pytest.mark.parametrize(
    "raw",
    ["999.1.1.1", "203.0.113.09", "203.0.113", "localhost", "[::1", "1.2.3.4:x", ""],
)
def test_invalid_client_ip_address_is_dropped_with_a_warning(raw):
    result = hash_user_data({"ip_address": raw})
    assert result.fields == {}
    assert result.warnings[0].path == "user_data.ip_address"


def test_plain_fields_are_trimmed_and_never_hashed():
    already_hex = digest("looks hashed").upper()
    result = hash_user_data(
        {
            "user_agent": "  Mozilla/5.0 (X11; Linux x86_64)  ",
            "click_id": already_hex,
            "partner_id": " RampID-AbC ",
        }
    )
    assert result.fields == {
        "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        "click_id": already_hex,
        "partner_id": "RampID-AbC",
    }


def test_integer_partner_id_becomes_text():
    assert hash_user_data({"partner_id": 42}).fields == {"partner_id": "42"}


@pytest.mark.parametrize("key", sorted(PLAIN_FIELDS))
def test_empty_plain_value_is_dropped_with_a_warning(key):
    result = hash_user_data({key: "  "})
    assert result.fields == {}
    assert reasons(result) == [hashing._EMPTY]


@pytest.mark.parametrize("key", sorted(PLAIN_FIELDS))
def test_plain_value_of_an_unsupported_type_is_dropped(key):
    result = hash_user_data({key: {"nested": "value"}})
    assert reasons(result) == ["unsupported value type dict"]


def test_plain_field_list_keeps_the_first_usable_value():
    result = hash_user_data(
        {"client_ip_address": ["not an ip", "203.0.113.9", "198.51.100.7"]}
    )
    assert result.fields == {"client_ip_address": "203.0.113.9"}
    assert [(w.path, w.reason) for w in result.warnings] == [
        ("user_data.client_ip_address.0", hashing._NOT_AN_IP),
        ("user_data.client_ip_address.2", hashing._EXTRA_PLAIN_VALUE),
    ]


def test_plain_field_given_twice_with_the_same_value_gives_no_warning():
    result = hash_user_data({"user_agent": "UA", "client_user_agent": " UA "})
    assert result == HashedUserData({"client_user_agent": "UA"}, ())


def test_plain_field_aliases_map_to_wire_codes():
    result = hash_user_data({"ip_address": "203.0.113.9", "user_agent": "UA"})
    assert result.fields == {
        "client_ip_address": "203.0.113.9",
        "client_user_agent": "UA",
    }


# The mapping as a whole.


def test_unknown_keys_are_passed_through_unchanged():
    value = [1, {"x": 2}]
    result = hash_user_data({"em": "a@example.com", "favourite_colour": value})
    assert result.fields["favourite_colour"] is value
    assert result.warnings == ()


def test_non_mapping_input_gives_one_warning_and_no_fields():
    result = hash_user_data(["a@example.com"])  # type: ignore[arg-type]
    assert result == HashedUserData(
        {}, (FieldWarning("user_data", hashing._NOT_A_MAPPING),)
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("user_data", "user_data.em.1"),
        ("data.3.user_data", "data.3.user_data.em.1"),
        ("", "em.1"),
    ],
)
def test_warning_path_starts_with_the_given_prefix(path, expected):
    result = hash_user_data({"em": ["a@example.com", "bad"]}, path=path)
    assert [warning.path for warning in result.warnings] == [expected]


def test_full_record_of_raw_values_gives_every_wire_code():
    record = {friendly: raw for friendly, raw, options, _ in GOLDEN if not options}
    record["phone"] = "+1 (650) 555-1212"
    result = hash_user_data(record)
    assert set(result.fields) == set(HASHED_FIELDS.values())
    assert result.warnings == ()


def test_input_mapping_is_not_modified():
    data = {"email": ["A@example.com"], "ip_address": "203.0.113.9:1"}
    snapshot = {"email": ["A@example.com"], "ip_address": "203.0.113.9:1"}
    hash_user_data(data)
    assert data == snapshot


# Privacy: no value or digest in warnings, errors, reprs or logs.

SECRETS: list[tuple[str, object]] = [
    ("email", "not-an-email-secretvalue"),
    ("phone", "+1 555"),
    ("phone", "secretphone"),
    ("first_name", b"secretname"),
    ("gender", "secretgender"),
    ("date_of_birth", "31/12/1999"),
    ("date_of_birth", "1999-02-31"),
    ("country", "Secretland"),
    ("zip_code", {"zip": "secretzip"}),
    ("client_ip_address", "300.1.2.3"),
    ("client_ip_address", ["203.0.113.9", "198.51.100.77"]),
    ("click_id", ["first-secret", "second-secret"]),
]


@pytest.mark.parametrize(("key", "raw"), SECRETS)
def test_warnings_never_hold_the_value(key, raw):
    result = hash_user_data({key: raw})
    assert result.warnings
    texts = [repr(result), str(result), *map(repr, result.warnings)]
    values = raw if isinstance(raw, list) else [raw]
    for value in values:
        needle = value.decode() if isinstance(value, bytes) else str(value)
        for text in texts:
            assert needle not in text
            assert needle.strip().lower() not in text


def test_repr_names_fields_but_shows_no_value_or_digest():
    result = hash_user_data(
        {"email": "a@example.com", "ip_address": "203.0.113.9", "other": "secret-other"}
    )
    text = repr(result)
    assert "em" in text
    assert A_DIGEST not in text
    assert "203.0.113.9" not in text
    assert "secret-other" not in text


@pytest.mark.parametrize(
    ("normalize", "raw"),
    [
        (normalize_email, "not-an-email-secretvalue"),
        (normalize_phone, "secretphone"),
        (normalize_phone, "+999 5551234"),
        (normalize_gender, "secretgender"),
        (normalize_date_of_birth, "1999-02-31"),
        (normalize_country, "Secretland"),
        (normalize_ip_address, "300.1.2.3"),
    ],
)
def test_normalizer_errors_never_hold_the_value(normalize, raw):
    with pytest.raises(UnusableValueError) as info:
        normalize(raw)
    assert raw not in str(info.value)
    assert raw not in repr(info.value)


@pytest.mark.parametrize(
    ("normalize", "raw"),
    [
        (normalize_date_of_birth, "19990231"),
        (normalize_ip_address, "secret-host-name"),
        (normalize_ip_address, "[secret::zz]:443"),
    ],
)
def test_normalizer_errors_chain_no_exception_that_quotes_the_value(normalize, raw):
    """date and ipaddress quote the text in their ValueError; it must not
    stay reachable as the `__context__` of ours (#2)."""
    with pytest.raises(UnusableValueError) as info:
        normalize(raw)

    assert (info.value.__context__, info.value.__cause__) == (None, None)


def test_dropping_values_logs_nothing(caplog):
    caplog.set_level(logging.DEBUG, logger="pinterest_mw")
    hash_user_data(dict(SECRETS))
    assert caplog.records == []


def test_unexpected_normalizer_failure_drops_the_value_and_logs_no_value(
    monkeypatch, caplog
):
    """A bug in a rule must never raise into the caller or leak the value."""

    def broken_rule(text: str) -> str:
        raise RuntimeError(f"cannot handle {text}")

    monkeypatch.setitem(hashing._BASE_RULES, "em", broken_rule)
    caplog.set_level(logging.DEBUG, logger="pinterest_mw")
    result = hash_user_data({"email": "secret@example.com", "em": ["x@example.com"]})
    assert result.fields == {}
    assert reasons(result) == [hashing._INTERNAL_ERROR] * 2
    assert [record.levelno for record in caplog.records] == [logging.ERROR] * 2
    for record in caplog.records:
        assert "secret" not in record.getMessage()
        assert "x@example.com" not in record.getMessage()
        assert record.exc_info is None


def test_unexpected_plain_field_failure_drops_the_value(monkeypatch, caplog):
    def broken(value: object) -> str:
        raise RuntimeError(f"cannot handle {value}")

    monkeypatch.setattr(hashing, "_plain_text", broken)
    caplog.set_level(logging.DEBUG, logger="pinterest_mw")
    result = hash_user_data({"click_id": ["secret-click"]})
    assert result == HashedUserData(
        {}, (FieldWarning("user_data.click_id.0", hashing._INTERNAL_ERROR),)
    )
    assert "secret-click" not in caplog.text


# Helpers and tables.


def test_sha256_hex_is_lowercase_hex_of_the_utf8_bytes():
    assert sha256_hex("josé") == hashlib.sha256("josé".encode()).hexdigest()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (digest("x"), True),
        (digest("x").upper(), True),
        (digest("x")[:63], False),
        (digest("x") + "0", False),
        ("g" * 64, False),
        (" " + digest("x")[1:], False),
        ("", False),
    ],
)
def test_is_sha256_hex(value, expected):
    assert is_sha256_hex(value) is expected


def test_hashed_fields_table_maps_friendly_names_to_wire_codes():
    assert dict(HASHED_FIELDS) == {
        "email": "em",
        "phone": "ph",
        "first_name": "fn",
        "last_name": "ln",
        "gender": "ge",
        "date_of_birth": "db",
        "city": "ct",
        "state": "st",
        "zip_code": "zp",
        "country": "country",
        "external_id": "external_id",
        "hashed_maids": "hashed_maids",
    }


def test_plain_fields_table_lists_the_four_unhashed_fields():
    assert dict(PLAIN_FIELDS) == {
        name: name
        for name in ("client_ip_address", "client_user_agent", "click_id", "partner_id")
    }


def test_field_tables_are_read_only():
    with pytest.raises(TypeError):
        HASHED_FIELDS["email"] = "x"  # type: ignore[index]


def test_field_warning_is_frozen():
    warning = FieldWarning("user_data.em", "empty after normalization")
    with pytest.raises(AttributeError):
        warning.path = "other"  # type: ignore[misc]
