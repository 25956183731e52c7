"""Normalize and hash the personal data in an event's `user_data`.

Pinterest matches a conversion to an ad click by comparing SHA-256 digests.
A value hashed in another normal form than the one Pinterest uses never
matches, and nobody is told: the conversion is silently lost. Each
`normalize_*` function here applies one field rule of the normalization
policy; `hash_user_data` runs them over a whole `user_data` mapping and
returns wire-ready values keyed by Pinterest's field codes.

Privacy: hashed fields leave this module only as SHA-256 hex digests. The four
plain fields (IP address, user agent, click id, partner id) are validated and
trimmed but never hashed, because Pinterest requires them as they are. No
value or digest ever appears in a warning, an exception message, a log record
or a `repr`. For speed, bounded in-memory caches keep recently parsed phone
numbers (see `normalize_phone`) and the digests of recent gender, state and
country texts; nothing is stored anywhere else.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from types import MappingProxyType
from typing import Any, Final

import phonenumbers
import pycountry

from ._parsing import parsed_or_none
from .exceptions import ConfigurationError, UnusableValueError

__all__ = [
    "HASHED_FIELDS",
    "PLAIN_FIELDS",
    "USER_DATA_KEYS",
    "FieldWarning",
    "HashedUserData",
    "UnusableValueError",
    "check_default_region",
    "hash_user_data",
    "is_sha256_hex",
    "normalize_city",
    "normalize_country",
    "normalize_date_of_birth",
    "normalize_email",
    "normalize_external_id",
    "normalize_gender",
    "normalize_ip_address",
    "normalize_maid",
    "normalize_name",
    "normalize_phone",
    "normalize_state",
    "normalize_zip",
    "sha256_hex",
]

logger = logging.getLogger(__name__)

HASHED_FIELDS: Final[Mapping[str, str]] = MappingProxyType(
    {
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
)
"""Friendly name -> Pinterest wire code of every field that is sent hashed."""

PLAIN_FIELDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "client_ip_address": "client_ip_address",
        "client_user_agent": "client_user_agent",
        "click_id": "click_id",
        "partner_id": "partner_id",
    }
)
"""Friendly name -> wire code of the fields Pinterest wants unhashed.

`hash_user_data` also accepts `ip_address` and `user_agent` as short aliases
of the first two.
"""

USER_DATA_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {
        **{wire: wire for wire in HASHED_FIELDS.values()},
        **HASHED_FIELDS,
        **PLAIN_FIELDS,
        "ip_address": "client_ip_address",
        "user_agent": "client_user_agent",
    }
)
"""Every key `hash_user_data` reads (friendly name, alias or wire code),
mapped to the wire code it is sent under."""

# Warning reasons. None of them may ever be formatted with a value.
_EMPTY: Final = "empty after normalization"
_WRONG_TYPE: Final = "unsupported value type {type_name}"
_NOT_A_MAPPING: Final = "user data must be a mapping of field names to values"
_NOT_AN_EMAIL: Final = "not an email address (needs one @ and no spaces)"
_UNKNOWN_GENDER: Final = "not a known gender spelling (f, m, n or a common word)"
_AMBIGUOUS_DATE: Final = (
    "not a YYYY-MM-DD or YYYYMMDD date; set a date format for other forms"
)
_NOT_A_DATE: Final = "not a calendar date"
_UNKNOWN_COUNTRY: Final = "not an ISO 3166 country code or English country name"
_NOT_AN_IP: Final = "not an IPv4 or IPv6 address"
_PHONE_UNPARSABLE: Final = "not a phone number phonenumbers can parse"
_PHONE_NEEDS_REGION: Final = (
    "phone number with letters needs a + or 00 country code or a default_region"
)
_PHONE_TOO_SHORT: Final = "phone number has fewer than 7 digits"
_PHONE_TOO_LONG: Final = "phone number has more than 15 digits"
_PHONE_TOO_LONG_FOR_COUNTRY: Final = "phone number is too long for its country"
_PHONE_INCOMPLETE: Final = (
    "phone number is too short for its country (a local number needs its area code)"
)
_PHONE_NO_COUNTRY: Final = (
    "phone number has no + or 00 country code and no default_region is set;"
    " it was hashed as written and matches only if it starts with its"
    " country code"
)
_EXTRA_PLAIN_VALUE: Final = "field takes one value; this extra value was ignored"
_NOT_UNICODE: Final = "not valid Unicode text (it holds a lone surrogate)"
_MAX_INTEGER_DIGITS: Final = 64
_INTEGER_TOO_LONG: Final = (
    f"integer of more than {_MAX_INTEGER_DIGITS} digits; pass it as a string"
)
_INTERNAL_ERROR: Final = "value could not be normalized (internal error, logged)"
# Configuration errors, not warnings: they name the option only.
_BAD_REGION: Final = (
    "default_region must be a two-letter region code phonenumbers knows, such as 'US'"
)
_BAD_DATE_FORMAT: Final = (
    "date_format must be a strptime format that reads a day, a month and a"
    " year, such as %d/%m/%Y"
)
# A date that tells day, month and year apart, to try a date format with.
_SAMPLE_DATE: Final = date(1987, 12, 31)

_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")
_ASCII_NON_ALNUM: Final = re.compile(r"[^a-z0-9]+")
_ASCII_NON_LETTER: Final = re.compile(r"[^a-z]+")
_BRACKETED_HOST: Final = re.compile(r"\[([^\]]+)\](?::[0-9]{1,5})?")
_IPV4_WITH_PORT: Final = re.compile(r"([0-9.]+):[0-9]{1,5}")
_IPV4_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4: Final = re.compile(rf"(?:{_IPV4_OCTET}\.){{3}}{_IPV4_OCTET}")
_LETTER: Final = re.compile(r"[^\W\d_]")
# What JSON's "\ud800" decodes to: no UTF-8 bytes exist for it to hash.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# A leading + (or its full-width form) or 00, after anything that is not a
# digit, gives the country code: "tel:+1...", "(+44) ...", "0044 ...". With
# a default region, phonenumbers reads 00 first (see `_parse_in_region`).
_INTERNATIONAL_PREFIX: Final = re.compile(r"[^+\uff0b\d]*(?:([+\uff0b])|00)")
# The North American shapes written every day, such as "+1 (650) 555-1212",
# "001-650-555-1212", "1.650.555.1212" or "6505551212", read without
# phonenumbers. The area code starts with 2-9, so no digit can be taken for
# a national prefix that phonenumbers would strip; the property tests check
# these patterns against phonenumbers for every string they match.
_NANP_INTERNATIONAL: Final = re.compile(
    r"(?:\+|00) ?1[ .-]?\(?([2-9][0-9]{2})\)?[ .-]?([0-9]{3})[ .-]?([0-9]{4})",
    re.ASCII,
)
_NANP_NATIONAL: Final = re.compile(
    r"(?:1[ .-]?)?\(?([2-9][0-9]{2})\)?[ .-]?([0-9]{3})[ .-]?([0-9]{4})",
    re.ASCII,
)
_NANP_REGIONS: Final = frozenset({"US", "CA"})
# phonenumbers refuses longer input; the cap also bounds the parse cache.
_PHONE_MAX_INPUT: Final = 250
_PHONE_MIN_DIGITS: Final = 7
_PHONE_MAX_DIGITS: Final = 15

_GENDERS: Final = {
    "f": "f",
    "female": "f",
    "woman": "f",
    "m": "m",
    "male": "m",
    "man": "m",
    "n": "n",
    "nonbinary": "n",
    "non-binary": "n",
    "non binary": "n",
    "non_binary": "n",
    "other": "n",
}
_GENDER_SEPARATORS: Final = str.maketrans("", "", " -_")
# Everyday English names that pycountry's ISO names miss: CLDR's short
# names ("Russia", "Turkey", "Cape Verde") and common informal ones. Each
# names one country beyond doubt; ambiguous ones ("Korea") stay unmapped.
# (phonenumbers ships the CLDR names too, but loading them costs ~100 MB.)
_COUNTRY_ALIASES: Final = {
    "america": "us",
    "bosnia": "ba",
    "britain": "gb",
    "brunei": "bn",
    "burma": "mm",
    "cape verde": "cv",
    "cocos islands": "cc",
    "democratic republic of the congo": "cd",
    "dr congo": "cd",
    "drc": "cd",
    "east timor": "tl",
    "england": "gb",
    "falkland islands": "fk",
    "great britain": "gb",
    "holland": "nl",
    "ivory coast": "ci",
    "macau": "mo",
    "macedonia": "mk",
    "micronesia": "fm",
    "northern ireland": "gb",
    "palestine": "ps",
    "republic of the congo": "cg",
    "russia": "ru",
    "saint helena": "sh",
    "saint martin": "mf",
    "scotland": "gb",
    "swaziland": "sz",
    "turkey": "tr",
    "uae": "ae",
    "uk": "gb",
    "u.s.": "us",
    "u.s. virgin islands": "vi",
    "vatican": "va",
    "vatican city": "va",
    "wales": "gb",
}

_sha256: Final = hashlib.sha256
# Tuples, not `X | Y` unions: isinstance() builds a union object on each call.
_SEQUENCE_TYPES: Final = (list, tuple)
_IP_ADDRESS_TYPES: Final = (ipaddress.IPv4Address, ipaddress.IPv6Address)


@dataclass(frozen=True, slots=True)
class FieldWarning:
    """One value dropped, ignored, or sent on an assumption, named by its path.

    `path` is dotted from the user data (`user_data.em.1`, `user_data.phone`)
    or, for `Event.warnings`, from the event (`event_name`), and `reason`
    says which rule failed or what was assumed; neither ever holds the
    value. `dropped` is false for a value that was still sent: a phone
    number without a country code, hashed as written when no default region
    is set, or a standard event name in other letter case.
    """

    path: str
    reason: str
    dropped: bool = True


@dataclass(frozen=True, slots=True, repr=False)
class HashedUserData:
    """The wire-ready result of `hash_user_data`.

    `fields` is keyed by wire code: hashed fields hold lists of 64-character
    lowercase hex digests (deduplicated, in input order), plain fields one
    string. Keys `hash_user_data` does not know are carried over with their
    value untouched (whatever its type), so that the event model can reject
    them by name. `warnings` lists every value that was dropped.

    Privacy: the `repr` names the known fields that are set and counts the
    others, never showing a value or a digest.
    """

    fields: dict[str, str | list[str]]
    warnings: tuple[FieldWarning, ...] = ()

    def __repr__(self) -> str:
        known = [key for key in self.fields if key in USER_DATA_KEYS]
        others = len(self.fields) - len(known)
        return (
            f"HashedUserData(fields={known!r}, other_keys={others}, "
            f"warnings={self.warnings!r})"
        )


def sha256_hex(text: str) -> str:
    """Return the SHA-256 digest of `text`'s UTF-8 bytes as lowercase hex."""
    return _sha256(text.encode()).hexdigest()


def is_sha256_hex(value: str) -> bool:
    """Tell whether `value` is exactly 64 hexadecimal characters (any case).

    Such a value is taken as already hashed: `hash_user_data` lowercases it and
    sends it as it is.
    """
    return len(value) == 64 and _HEX64.fullmatch(value) is not None


def _wrong_type(value: object) -> UnusableValueError:
    return UnusableValueError(_WRONG_TYPE.format(type_name=type(value).__name__))


_INTEGER_BOUND: Final = 10**_MAX_INTEGER_DIGITS


def _integer_text(value: int) -> str:
    """Write an integer in decimal digits, refusing one of more than 64.

    Far beyond any real id or number, and well within what Python writes
    out at all: past its limit (4300 digits by default) `str()` raises, and
    below it the time taken grows with the square of the length.
    """
    if not -_INTEGER_BOUND < value < _INTEGER_BOUND:
        raise UnusableValueError(_INTEGER_TOO_LONG)

    return str(value)


def _lower(text: str) -> str:
    """Compose `text` to NFC, trim it and lowercase it: the first policy step.

    Text holding a lone surrogate is refused: it has no UTF-8 form to hash.
    """
    if text.isascii():
        return text.strip().lower()
    if _SURROGATE.search(text) is not None:
        raise UnusableValueError(_NOT_UNICODE)

    text = unicodedata.normalize("NFC", text).strip().lower()
    # Lowercasing maps code point by code point and may leave a sequence that
    # composes differently, so the result is composed once more.
    return unicodedata.normalize("NFC", text)


def _prepare(value: object, *, integers: bool = False) -> str:
    """Return `value` as NFC text, trimmed and lowercased.

    Only `str` is accepted, and `int` (never `bool`) when `integers` is true.
    """
    if isinstance(value, str):
        return _lower(value)
    if integers and isinstance(value, int) and not isinstance(value, bool):
        return _integer_text(value)

    raise _wrong_type(value)


def _non_empty(text: str) -> str:
    if not text:
        raise UnusableValueError(_EMPTY)

    return text


def _keep_categories(text: str, categories: str) -> str:
    """Keep the characters whose Unicode major category is in `categories`."""
    kept = "".join(char for char in text if unicodedata.category(char)[0] in categories)
    # Removing a character can bring a letter and a mark together ("e-\u0301"),
    # which NFC composes, so the result is composed again.
    return _non_empty(unicodedata.normalize("NFC", kept))


def _alphanumerics(text: str) -> str:
    """Remove spaces and punctuation, keeping letters, marks and digits."""
    if text.isalnum():
        return text
    # Most values are words of letters between spaces: str.split() removes
    # only whitespace, which the rule removes too.
    joined = "".join(text.split())
    if joined.isascii():
        return _non_empty(_ASCII_NON_ALNUM.sub("", joined))
    if joined.isalnum():
        return unicodedata.normalize("NFC", joined)

    return _keep_categories(joined, "LMN")


def _compatibility_folded(text: str) -> str:
    """Fold compatibility forms (NFKC), such as full-width digits and letters.

    Only zip codes and states are folded: Pinterest's rules for them ask for
    ASCII ("digits only", a two-letter code), so full-width digits or
    letters (U+FF10 to U+FF5A, as East Asian keyboards type them) can only
    mean `94025` or `ca`. Names and cities have no such rule, and
    Pinterest's own tag template only trims and lowercases them: folding a
    full-width name to ASCII could make a digest that matches nobody, so
    they keep the policy's NFC.
    """
    return _lower(unicodedata.normalize("NFKC", text))


def _fold(text: str) -> str:
    """Return the ASCII letters of `text`, accents removed: a lookup key."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return _ASCII_NON_LETTER.sub("", decomposed)


# The field rules below take text that `_prepare` already composed, trimmed
# and lowercased, so that `hash_user_data` prepares each value only once.


def _email_rule(text: str) -> str:
    # isprintable() is false for every whitespace character but the space.
    if (
        text.count("@") != 1
        or text[0] == "@"
        or text[-1] == "@"
        or " " in text
        or not text.isprintable()
    ):
        raise UnusableValueError(_NOT_AN_EMAIL if text else _EMPTY)

    return text


def _gender_rule(text: str) -> str:
    code = _GENDERS.get(text) or _GENDERS.get(text.translate(_GENDER_SEPARATORS))
    if code is None:
        raise UnusableValueError(_UNKNOWN_GENDER if text else _EMPTY)

    return code


def _compact_date(value: date) -> str:
    # strftime("%Y") does not pad years before 1000 on every platform.
    return value.isoformat()[:10].replace("-", "")


def _iso_date(text: str) -> str | None:
    """Return `YYYYMMDD` for a `YYYY-MM-DD` or `YYYYMMDD` text, else `None`."""
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        compact = text.replace("-", "")
    elif len(text) == 8:
        compact = text
    else:
        return None
    if len(compact) != 8 or not compact.isascii() or not compact.isdigit():
        return None

    if parsed_or_none(date.fromisoformat, compact) is None:
        raise UnusableValueError(_NOT_A_DATE)

    return compact


def _date_of_birth_rule(date_format: str | None, text: str) -> str:
    if date_format is not None and text:
        try:
            return _compact_date(datetime.strptime(text, date_format))
        except ValueError:
            pass

    compact = _iso_date(text)
    if compact is None:
        raise UnusableValueError(_AMBIGUOUS_DATE if text else _EMPTY)

    return compact


@functools.cache
def _state_codes() -> dict[str, str]:
    """Map US state and Canadian province names to their two-letter codes.

    Each name is keyed both lowercased (the usual spelling, found at once)
    and folded to ASCII letters (for any other spelling), and the ISO 3166-2
    code (`us-ny`) is a key too.
    """
    # pycountry's lookup methods carry no annotations.
    subdivisions: Any = pycountry.subdivisions
    codes: dict[str, str] = {}
    for country in ("US", "CA"):
        for subdivision in subdivisions.get(country_code=country):
            iso_code = subdivision.code.lower()
            code = iso_code.split("-")[1]
            codes[iso_code] = code
            codes[subdivision.name.lower()] = code
            codes[_fold(subdivision.name)] = code

    return codes


def _state_rule(text: str) -> str:
    if not text.isascii():
        text = _compatibility_folded(text)
    if len(text) == 2 and text.isascii() and text.isalpha():
        return text
    code = _state_codes().get(text)
    if code is not None:
        return code

    if text.isascii():
        letters = _non_empty(_ASCII_NON_LETTER.sub("", text))
    else:
        letters = _keep_categories(text, "LM")

    return _state_codes().get(_fold(letters), letters)


def _zip_rule(text: str) -> str:
    if not text.isascii():
        text = _compatibility_folded(text)
    if text.isascii():
        if len(text) == 5 and text.isdigit():
            return text
        # ZIP+4 written the usual way, checked before the general rule.
        if len(text) == 10 and text[5] == "-" and (text[:5] + text[6:]).isdigit():
            return text[:5]

    code = _alphanumerics(text)
    # Nine digits alone are a ZIP+4, whatever separated them ("12345 6789",
    # "12345 - 6789", "12345\u20136789"): postcodes elsewhere are shorter or
    # longer, or hold letters.
    if len(code) == 9 and code.isascii() and code.isdigit():
        return code[:5]

    return code


@functools.cache
def _alpha_2_codes() -> frozenset[str]:
    return frozenset(country.alpha_2.lower() for country in pycountry.countries)


@functools.cache
def _country_codes() -> dict[str, str]:
    """Map alpha-3 codes and English country names to alpha-2 codes.

    The names are pycountry's (official and common ones too), then our
    aliases, which never override them. Each name is keyed both lowercased
    (the usual spelling, found at once) and folded to ASCII letters (for
    any other spelling).
    """
    codes: dict[str, str] = {}
    for country in pycountry.countries:
        alpha_2 = country.alpha_2.lower()
        for attribute in ("alpha_3", "name", "official_name", "common_name"):
            name = getattr(country, attribute, None)
            if name:
                codes.setdefault(name.lower(), alpha_2)
                codes.setdefault(_fold(name), alpha_2)
    for name, alpha_2 in _COUNTRY_ALIASES.items():
        codes.setdefault(name, alpha_2)
        codes.setdefault(_fold(name), alpha_2)

    return codes


def _country_rule(text: str) -> str:
    if len(text) == 2 and text in _alpha_2_codes():
        return text
    codes = _country_codes()
    code = codes.get(text) or codes.get(_fold(text))
    if code is None and text.startswith("the "):
        # "The Netherlands", "the Gambia": the article is not part of a name.
        code = codes.get(text[4:]) or codes.get(_fold(text[4:]))
    if code is None:
        raise UnusableValueError(_UNKNOWN_COUNTRY if text else _EMPTY)

    return code


def check_default_region(default_region: object) -> str | None:
    """Validate a default phone region and return it uppercased.

    `None` (no default region) is returned as it is. The client, the CLI
    and the hasher all check the option here, so they accept the same codes:
    the regions phonenumbers knows, in any case (`"us"` becomes `"US"`).

    Raises `ConfigurationError` for anything else; the message names the
    option, never the value.
    """
    if default_region is None:
        return None
    if isinstance(default_region, str):
        region = default_region.strip().upper()
        if region in phonenumbers.SUPPORTED_REGIONS:
            return region

    raise ConfigurationError(_BAD_REGION)


def _nanp_fast_path(text: str, region: str | None) -> str | None:
    """Return the digits of an everyday North American shape, if it is one.

    `None` means "not sure": the caller then asks phonenumbers.
    """
    if text[:1] == "+" or (text[:2] == "00" and _reads_00_as_plus(region)):
        match = _NANP_INTERNATIONAL.fullmatch(text)
    elif region in _NANP_REGIONS:
        match = _NANP_NATIONAL.fullmatch(text)
    else:
        return None
    if match is None:
        return None

    area, exchange, line = match.groups()
    return f"1{area}{exchange}{line}"


@functools.cache
def _reads_00_as_plus(region: str | None) -> bool:
    """Whether `00 1 ...` surely means `+1 ...` for phonenumbers in `region`.

    So it does where 00 is the whole international prefix, and in North
    America, where no national number starts with 0. Elsewhere (`0011` in
    Australia, `0021` in Brazil) the fast path leaves the text to
    phonenumbers.
    """
    if region is None or region in _NANP_REGIONS:
        return True
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)

    return metadata is not None and metadata.international_prefix == "00"


def _checked_phone_digits(digits: str) -> tuple[str, str]:
    if len(digits) < _PHONE_MIN_DIGITS:
        return "", _PHONE_TOO_SHORT
    if len(digits) > _PHONE_MAX_DIGITS:
        return "", _PHONE_TOO_LONG

    return digits, ""


def _parse_phone(text: str, region: str | None) -> tuple[str, str]:
    return _verdict(_parse(text, region))


def _parse(text: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        # The raw input is kept for `country_code_source`.
        return phonenumbers.parse(text, region, keep_raw_input=True)
    except phonenumbers.NumberParseException:
        return None


def _parse_in_region(
    text: str, region: str, international: re.Match[str] | None
) -> tuple[str, str]:
    """Read a number as `region` writes it; a leading 00 may still mean +.

    phonenumbers reads the region's own international prefix (`0011` in
    Australia, `0021` in Brazil, `011` in the US) as `+`, and its verdict
    on such a number stands: reading its digits again another way would
    only find somebody else's number. A leading 00 that the region does
    not dial abroad is read as a national number first, then, if that is
    no usable number, as `+`, as people write it whatever their country
    (`00 44 20 7946 0958` in the US or in Australia).
    """
    number = _parse(text, region)
    digits, reason = _verdict(number)
    if digits or international is None or international.group(1):
        return digits, reason
    if number is not None and number.country_code_source == _FROM_IDD:
        return digits, reason

    return _parse_phone("+" + text[international.end() :], None)


_FROM_IDD: Final = phonenumbers.CountryCodeSource.FROM_NUMBER_WITH_IDD


def _verdict(number: phonenumbers.PhoneNumber | None) -> tuple[str, str]:
    """Return `(digits, "")` for a usable number, else `("", reason)`."""
    if number is None:
        return "", _PHONE_UNPARSABLE
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    digits, reason = _checked_phone_digits(e164[1:])
    if not reason:
        reason = _REFUSED_LENGTHS.get(_possible(number), "")

    return ("", reason) if reason else (digits, "")


def _possible(number: phonenumbers.PhoneNumber) -> int:
    reason: int = phonenumbers.is_possible_number_with_reason(number)
    return reason


# phonenumbers' verdicts on a number's length that refuse it. A local number
# written without its area code ("7946 0958" in London) gets a country code
# all the same, but the result is nobody's number; one too long for its
# country is nobody's either (often a prefix read as digits). A length
# phonenumbers merely does not expect (INVALID_LENGTH) is kept, as its
# metadata may lag behind a new range.
_REFUSED_LENGTHS: Final[Mapping[int, str]] = MappingProxyType(
    {
        phonenumbers.ValidationResult.TOO_SHORT: _PHONE_INCOMPLETE,
        phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY: _PHONE_INCOMPLETE,
        phonenumbers.ValidationResult.TOO_LONG: _PHONE_TOO_LONG_FOR_COUNTRY,
    }
)


@functools.lru_cache(maxsize=4096)
def _phone_slow_path(text: str, region: str | None) -> tuple[str, str]:
    """Return `(digits, "")`, `("", reason)` or `(digits, reason)`.

    The last form is a number hashed on an assumption, with the warning to
    give. Results are cached because phonenumbers takes tens of
    microseconds per number and the same customer often converts more than
    once.
    """
    international = _INTERNATIONAL_PREFIX.match(text)
    if region is not None:
        return _parse_in_region(text, region, international)
    if international is not None:
        return _parse_phone("+" + text[international.end() :], None)

    if _LETTER.search(text) is not None:
        return "", _PHONE_NEEDS_REGION
    digits, reason = _checked_phone_digits(
        phonenumbers.normalize_digits_only(text).lstrip("0")
    )

    return digits, reason or _PHONE_NO_COUNTRY


class _KeptWithWarning(Exception):
    """A rule's result that is hashed, but only on an assumption to report.

    Rules return text or raise `UnusableValueError`; this third outcome
    travels as an exception so that the common path pays nothing for it.
    """

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(reason)
        self.text = text
        self.reason = reason


def _phone_rule(region: str | None, text: str) -> str:
    fast = _nanp_fast_path(text, region)
    if fast is not None:
        return fast

    _non_empty(text)
    if len(text) > _PHONE_MAX_INPUT:
        raise UnusableValueError(_PHONE_TOO_LONG)
    digits, reason = _phone_slow_path(text, region)
    if not digits:
        raise UnusableValueError(reason)
    if reason:
        raise _KeptWithWarning(digits, reason)

    return digits


def normalize_email(value: object) -> str:
    """Normalize an email address: trimmed and lowercased.

    Dots and `+tags` are kept (removing them is a Gmail rule, not Pinterest's)
    and non-ASCII local parts are valid. A value without exactly one `@`
    between non-empty parts, or with inner whitespace or control characters,
    is refused.

    Privacy: returns the normalized address in clear; hash it before it
    leaves the process. Raises `UnusableValueError` with a reason that never
    holds the value.
    """
    return _email_rule(_prepare(value))


def normalize_name(value: object) -> str:
    """Normalize a first or last name: NFC, trimmed, lowercased.

    Inner spaces, hyphens and apostrophes are kept, as Pinterest asks for
    lowercase only.

    Privacy: returns the name in clear; hash it before it leaves the process.
    Raises `UnusableValueError` with a reason that never holds the value.
    """
    return _non_empty(_prepare(value))


def normalize_gender(value: object) -> str:
    """Normalize a gender to `f`, `m` or `n`.

    Accepts those letters and `female`/`woman`, `male`/`man` and
    `non-binary`/`nonbinary`/`other` in any case; spaces, hyphens and
    underscores are ignored. Anything else is refused.

    Privacy: returns the code in clear; hash it before it leaves the process.
    Raises `UnusableValueError` with a reason that never holds the value.
    """
    return _gender_rule(_prepare(value))


def normalize_date_of_birth(value: object, date_format: str | None = None) -> str:
    """Normalize a date of birth to `YYYYMMDD`.

    Accepts `date` and `datetime` objects (their calendar date as given),
    `YYYY-MM-DD` and `YYYYMMDD` strings, and an integer written `YYYYMMDD`.
    Other forms are ambiguous (`03/04/1997`) and refused unless `date_format`
    names the `strptime` format the caller uses; that format is tried first,
    then the two ISO forms. Impossible dates (`1997-02-30`) are refused. The
    text is lowercased before parsing, which `strptime` does not mind.

    Privacy: returns the date in clear; hash it before it leaves the process.
    Raises `UnusableValueError` with a reason that never holds the value,
    `ConfigurationError` for a `date_format` that `strptime` cannot use or
    that does not read a day, a month and a year (see `hash_user_data`),
    and `TypeError` for one that is not a string.
    """
    checked = _checked_date_format(date_format)
    if isinstance(value, date):
        return _compact_date(value)

    return _date_of_birth_rule(checked, _prepare(value, integers=True))


def normalize_city(value: object) -> str:
    """Normalize a city: lowercased, spaces and punctuation removed.

    Letters keep their accents (NFC), and digits and combining marks are
    kept, so scripts that write vowels as marks survive: `São Paulo` becomes
    `sãopaulo`, `Menlo Park` becomes `menlopark`.

    Privacy: returns the city in clear; hash it before it leaves the process.
    Raises `UnusableValueError` with a reason that never holds the value.
    """
    return _alphanumerics(_prepare(value))


def normalize_state(value: object) -> str:
    """Normalize a state or province: lowercase letters only.

    Full names of US states, territories and Canadian provinces map to their
    two-letter codes (`New York` and `Québec` become `ny` and `qc`), as do
    ISO 3166-2 codes such as `US-CA`. Other regions keep their letters
    (`Bavaria` becomes `bavaria`), since Pinterest defines no codes for them.
    The name table is loaded from pycountry on first use.

    Privacy: returns the state in clear; hash it before it leaves the process.
    Raises `UnusableValueError` with a reason that never holds the value.
    """
    return _state_rule(_prepare(value))


def normalize_zip(value: object) -> str:
    """Normalize a postal code.

    US ZIP and ZIP+4 codes (`94025`, `94025-1234`, `940251234`) become their
    first five digits. Other postcodes are lowercased with spaces and
    punctuation removed, so a UK postcode keeps its letters (`SW1A 1AA`
    becomes `sw1a1aa`). An integer is read as its digits: it has lost any
    leading zero, so pass postcodes as strings.

    Privacy: returns the code in clear; hash it before it leaves the process.
    Raises `UnusableValueError` with a reason that never holds the value.
    """
    return _zip_rule(_prepare(value, integers=True))


def normalize_country(value: object) -> str:
    """Normalize a country to its ISO 3166-1 alpha-2 code, lowercased.

    Accepts alpha-2 and alpha-3 codes and English names (official and common
    ones too: `United States of America`, `South Korea`, `Cote d'Ivoire`),
    mapped through pycountry on first use, and `UK` for `gb`. Anything that
    does not map is refused: a country name must never be hashed as it is.

    Privacy: returns the code in clear; hash it before it leaves the process.
    Raises `UnusableValueError` with a reason that never holds the value.
    """
    return _country_rule(_prepare(value))


def normalize_external_id(value: object) -> str:
    """Normalize the advertiser's own user id: trimmed and lowercased.

    Lowercasing matches Pinterest's own tag template. An integer id becomes
    its decimal digits.

    Privacy: returns the id in clear; hash it before it leaves the process.
    Raises `UnusableValueError` with a reason that never holds the value.
    """
    return _non_empty(_prepare(value, integers=True))


def normalize_maid(value: object) -> str:
    """Normalize a mobile advertising id (GAID or IDFA): trimmed, lowercased.

    Hyphens are kept.

    Privacy: returns the id in clear; hash it before it leaves the process.
    Raises `UnusableValueError` with a reason that never holds the value.
    """
    return _non_empty(_prepare(value))


def normalize_phone(value: object, default_region: str | None = None) -> str:
    """Normalize a phone number to its E.164 digits without the `+`.

    A leading `+` gives the country code. With a `default_region` (`"US"`,
    `"GB"`, ...) the number is read as that region writes it: its own
    international prefix gives the country code (`0011 44 20 7946 0958` in
    `AU`, `011 44 ...` in `US`), a national trunk `0`, also written `(0)`,
    disappears (`+44 (0)20 7946 0958` becomes `442079460958`), and a
    leading `00` the region does not dial abroad with is still read as `+`
    when the national reading gives no usable number. Without a region, a
    leading `00` gives the country code. Parsing is phonenumbers'; everyday
    North American shapes take a faster path that gives the same result. A
    number phonenumbers knows to be too short or too long for its country,
    such as a local number without its area code (`7946 0958` in `GB`), is
    refused. Without a country code or region, the digits are kept with
    leading zeros stripped (which matches only if they begin with the
    country code: `hash_user_data` warns about it), and text with letters
    (an extension, a vanity number) is refused. Results outside 7 to 15
    digits are refused. An integer is read as its digits.

    Raises `ConfigurationError` for an unknown `default_region` (see
    `check_default_region`), and `UnusableValueError` for an unusable
    number.

    Privacy: returns the number in clear; hash it before it leaves the
    process. Up to 4096 recently parsed numbers stay in an in-memory cache;
    nothing is written elsewhere. Error messages never hold the number.
    """
    region = check_default_region(default_region)
    try:
        return _phone_rule(region, _prepare(value, integers=True))
    except _KeptWithWarning as kept:
        return kept.text


def normalize_ip_address(value: object) -> str:
    """Validate a client IP address and return its canonical text.

    A `:port` suffix (`203.0.113.9:443`, `[2001:db8::1]:443`), brackets and
    an IPv6 zone (`%eth0`) are removed, an IPv4-mapped IPv6 address
    (`::ffff:203.0.113.9`) becomes the IPv4 address it carries, and IPv6 is
    written in its compressed lowercase form. `ipaddress` objects are
    accepted too.

    Privacy: the address is personal data that Pinterest requires unhashed;
    it is returned as it will be sent. Up to 1024 recently parsed addresses
    other than plain IPv4 stay in an in-memory cache. Raises
    `UnusableValueError` with a reason that never holds the value.
    """
    if isinstance(value, str):
        return _ip_text(value.strip())
    if isinstance(value, _IP_ADDRESS_TYPES):
        return _canonical_ip(value)

    raise _wrong_type(value)


def _ip_text(text: str) -> str:
    # A dotted quad without leading zeros is exactly how ipaddress writes an
    # IPv4 address, and checking that is ten times cheaper than parsing it.
    if _CANONICAL_IPV4.fullmatch(text) is not None:
        return text

    return _parse_ip(text)


@functools.lru_cache(maxsize=1024)
def _parse_ip(text: str) -> str:
    if not text:
        raise UnusableValueError(_EMPTY)
    with_port = _BRACKETED_HOST.fullmatch(text) or _IPV4_WITH_PORT.fullmatch(text)
    host = text if with_port is None else with_port.group(1)
    address = parsed_or_none(ipaddress.ip_address, host)
    if address is None:
        raise UnusableValueError(_NOT_AN_IP)

    return _canonical_ip(address)


def _canonical_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if address.scope_id is not None:
            return str(address).partition("%")[0]

    return str(address)


def _plain_text(value: object) -> str:
    """Trim a user agent, click id or partner id; integers become digits."""
    if isinstance(value, str):
        return _non_empty(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        return _integer_text(value)

    raise _wrong_type(value)


_TextRule = Callable[[str], str]

_BASE_RULES: Final[dict[str, _TextRule]] = {
    "em": _email_rule,
    "ph": functools.partial(_phone_rule, None),
    "fn": _non_empty,
    "ln": _non_empty,
    "ge": _gender_rule,
    "db": functools.partial(_date_of_birth_rule, None),
    "ct": _alphanumerics,
    "st": _state_rule,
    "zp": _zip_rule,
    "country": _country_rule,
    "external_id": _non_empty,
    "hashed_maids": _non_empty,
}
_INTEGER_FIELDS: Final = frozenset({"ph", "db", "zp", "external_id"})


def _rules(default_region: object, date_format: object) -> dict[str, _TextRule]:
    """Return the field rules for these options; bad options raise.

    Where the options come in: `hash_user_data`, and the event model once
    per call of `parse_event` or `parse_events`, which hands the rules to
    `_hash_with_rules` for each event.
    """
    if default_region is None and date_format is None:
        return _BASE_RULES
    if date_format is not None and not isinstance(date_format, str):
        msg = "date_format must be a strptime format string"
        raise TypeError(msg)

    return _bound_rules(check_default_region(default_region), date_format)


def _checked_date_format(date_format: object) -> str | None:
    """Return a usable date format, or `None`; raise for anything else."""
    if date_format is None:
        return None
    if not isinstance(date_format, str):
        msg = "date_format must be a strptime format string"
        raise TypeError(msg)

    return _usable_date_format(date_format)


@functools.lru_cache(maxsize=64)
def _usable_date_format(date_format: str) -> str:
    """Return `date_format` if it reads back a date it wrote; else raise.

    A format `strptime` cannot use (`%Q`) would fail on every value, and
    one without a day, a month or a year would hash a wrong date; either
    way every date of birth would be lost, so it is a configuration error
    rather than a warning per value.
    """
    try:
        text = _SAMPLE_DATE.strftime(date_format).lower()
        read_back: date | None = datetime.strptime(text, date_format).date()
    except (ValueError, TypeError, UnicodeError, re.error):
        # re.error: strptime builds a pattern, which a repeated directive
        # such as %Y-%Y breaks.
        read_back = None
    if read_back != _SAMPLE_DATE:
        raise ConfigurationError(_BAD_DATE_FORMAT)

    return date_format


@functools.lru_cache(maxsize=64)
def _bound_rules(region: str | None, date_format: str | None) -> dict[str, _TextRule]:
    """Return the field rules with the phone region and date format bound.

    Raises `ConfigurationError` for an unusable date format.
    """
    if date_format is not None:
        _usable_date_format(date_format)
    return {
        **_BASE_RULES,
        "ph": functools.partial(_phone_rule, region),
        "db": functools.partial(_date_of_birth_rule, date_format),
    }


@functools.lru_cache(maxsize=2048)
def _code_digest(wire: str, text: str) -> str:
    """Return the digest of a gender, state or country, which repeat endlessly.

    Their rules give a handful of codes, so caching by prepared text saves
    the rule and the hash on nearly every record.
    """
    return _sha256(_BASE_RULES[wire](text).encode()).hexdigest()


_CODE_FIELDS: Final = frozenset({"ge", "st", "country"})


def _digest(wire: str, rule: _TextRule, value: object) -> str:
    """Return the digest to send for one value of hashed field `wire`."""
    if isinstance(value, str):
        text = value.strip().lower() if value.isascii() else _lower(value)
    elif wire == "db" and isinstance(value, date):
        return _sha256(_compact_date(value).encode()).hexdigest()
    else:
        text = _prepare(value, integers=wire in _INTEGER_FIELDS)

    # Already hashed: the text is lowercased, and hex digits are ASCII.
    if len(text) == 64 and _HEX64.fullmatch(text) is not None:
        return text
    if wire in _CODE_FIELDS:
        return _code_digest(wire, text)

    return _sha256(rule(text).encode()).hexdigest()


def _warning(
    path: str, key: str, index: int | None, reason: str, *, dropped: bool = True
) -> FieldWarning:
    where = f"{path}.{key}" if path else key
    if index is not None:
        where = f"{where}.{index}"

    return FieldWarning(where, reason, dropped)


def _add_hashed(
    wire: str,
    rule: _TextRule,
    key: str,
    raw: object,
    fields: dict[str, Any],
    warnings: list[FieldWarning],
    path: str,
) -> None:
    """Hash every value of one input key, merging with an earlier spelling."""
    values: Sequence[object] = raw if isinstance(raw, _SEQUENCE_TYPES) else (raw,)
    digests: list[str] = fields.get(wire) or []
    for index, value in enumerate(values):
        if value is None:
            continue
        digest, reason = _hash_one(wire, rule, value)
        if reason:
            where = index if values is raw else None
            warnings.append(_warning(path, key, where, reason, dropped=not digest))
        if digest and digest not in digests:
            digests.append(digest)

    if digests and wire not in fields:
        fields[wire] = digests


def _hash_one(wire: str, rule: _TextRule, value: object) -> tuple[str, str]:
    """Return `(digest, "")`, `("", reason)` to drop, or both to warn and keep."""
    try:
        return _digest(wire, rule, value), ""
    except _KeptWithWarning as kept:
        return _sha256(kept.text.encode()).hexdigest(), kept.reason
    except UnusableValueError as exc:
        return "", str(exc)
    except Exception as exc:  # noqa: BLE001 - one value must never raise
        return "", _internal_error(exc)


def _add_plain(
    wire: str,
    key: str,
    raw: object,
    fields: dict[str, Any],
    warnings: list[FieldWarning],
    path: str,
) -> None:
    """Keep the first usable value of a plain field; warn about others."""
    values: Sequence[object] = raw if isinstance(raw, _SEQUENCE_TYPES) else (raw,)
    for index, value in enumerate(values):
        if value is None:
            continue
        try:
            if wire == "client_ip_address":
                text = normalize_ip_address(value)
            else:
                text = _plain_text(value)
        except UnusableValueError as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - one value must never raise
            reason = _internal_error(exc)
        else:
            if wire not in fields or fields[wire] == text:
                fields[wire] = text
                continue
            reason = _EXTRA_PLAIN_VALUE
        warnings.append(_warning(path, key, index if values is raw else None, reason))


def _internal_error(exc: Exception) -> str:
    """Log an unexpected normalizer failure by type only and return the reason.

    The hasher must never break the host application over one value, and the
    exception's message may hold the value, so it is not logged.
    """
    logger.error(
        "Dropped a user_data value after an unexpected %s while normalizing it",
        type(exc).__name__,
    )
    return _INTERNAL_ERROR


def hash_user_data(
    data: Mapping[str, Any],
    *,
    default_region: str | None = None,
    date_format: str | None = None,
    path: str = "user_data",
) -> HashedUserData:
    """Normalize and hash a `user_data` mapping into wire-ready fields.

    Keys may be friendly names (`email`, `zip_code`, ... see `HASHED_FIELDS`
    and `PLAIN_FIELDS`, plus the aliases `ip_address` and `user_agent`) or
    Pinterest's wire codes (`em`, `zp`, ...); a field given under two
    spellings has its values merged. Each value may be a single value or a
    list or tuple of them; `None` means absent. A string of 64 hex
    characters in a hashed field is taken as already hashed and only
    lowercased. Keys this function does not know are passed through with
    their value untouched, so the event model can reject them by name.

    A value that its field rule cannot use (wrong type, empty, malformed) is
    dropped and reported in `warnings`, with a path such as `user_data.em.1`
    (`path` is the prefix; pass `""` for bare keys). A plain field takes one
    value: the first usable one is kept, and a different extra value is
    dropped with a warning. A phone number with neither a `+`/`00` country
    code nor a `default_region` is hashed as written but also warned about,
    with `FieldWarning.dropped` false: it matches only if its digits begin
    with the country code. A non-mapping `data` gives no fields and one
    warning. The only errors raised are for configuration:
    `ConfigurationError` for an unknown `default_region` (see
    `check_default_region`) or a `date_format` that `strptime` cannot use
    or that does not read a day, a month and a year (such as `%Q/%m/%Y` or
    `%d/%m`), and `TypeError` for a `date_format` that is not a string (see
    `normalize_date_of_birth`).

    Privacy: hashed fields come out as SHA-256 hex digests only; IP address,
    user agent, click id and partner id come out unhashed, because Pinterest
    requires them so. Warnings never hold a value or a digest. Recent phone
    numbers and gender, state and country texts stay in bounded in-memory
    caches (4096 and 2048 entries) for speed.
    """
    return _hash_with_rules(data, _rules(default_region, date_format), path)


def _hash_with_rules(
    data: Mapping[str, Any], rules: Mapping[str, _TextRule], path: str = "user_data"
) -> HashedUserData:
    """`hash_user_data` with the rules of its options (see `_rules`)."""
    if type(data) is not dict and not isinstance(data, Mapping):
        return HashedUserData({}, (FieldWarning(path, _NOT_A_MAPPING),))

    fields: dict[str, Any] = {}
    warnings: list[FieldWarning] = []
    for key, raw in data.items():
        wire = USER_DATA_KEYS.get(key)
        if wire is None:
            fields[key] = raw
            continue
        if raw is None:
            continue
        rule = rules.get(wire)
        if type(raw) is not str or wire in fields:
            if rule is None:
                _add_plain(wire, key, raw, fields, warnings, path)
            else:
                _add_hashed(wire, rule, key, raw, fields, warnings, path)
            continue

        # One text under one spelling is the usual shape. It is handled
        # inline, because the hasher must keep up with 50,000 records a
        # second (issue 8); `_add_plain` and `_add_hashed` do the same work
        # for lists, other types and merged spellings.
        try:
            if rule is None:
                text = raw.strip()
                if wire == "client_ip_address":
                    fields[wire] = _ip_text(text)
                else:
                    fields[wire] = _non_empty(text)
            else:
                text = raw.strip().lower() if raw.isascii() else _lower(raw)
                if len(text) == 64 and _HEX64.fullmatch(text) is not None:
                    fields[wire] = [text]
                elif wire in _CODE_FIELDS:
                    fields[wire] = [_code_digest(wire, text)]
                else:
                    fields[wire] = [_sha256(rule(text).encode()).hexdigest()]
        except _KeptWithWarning as kept:
            fields[wire] = [_sha256(kept.text.encode()).hexdigest()]
            warnings.append(_warning(path, key, None, kept.reason, dropped=False))
        except UnusableValueError as exc:
            warnings.append(_warning(path, key, None, str(exc)))
        except Exception as exc:  # noqa: BLE001 - one value must never raise
            warnings.append(_warning(path, key, None, _internal_error(exc)))

    return HashedUserData(fields, tuple(warnings))
