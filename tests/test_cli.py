"""Tests of the `pinterest-mw` command line (`pinterest_mw.cli`).

Most commands are driven in-process through typer's `CliRunner`, with the
fake Pinterest API answering through pytest-httpx. `serve`, and one run of
each kind of command, also run as real processes (`python -m
pinterest_mw.cli`) against the fake served on 127.0.0.1.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import pty
import queue
import re
import select
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from pytest_httpx import HTTPXMock
from typer.testing import CliRunner

from pinterest_mw.cli import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_ROWS_FAILED,
    EXIT_TERMINATED,
    NOT_SENDING_LINE,
    ROW_ID_NAMESPACE,
    _close_served,
    _serve_client,
    build_app,
)
from pinterest_mw.events import WireEvent, build_event
from pinterest_mw.outbox import OutboxStats, SQLiteOutbox
from pinterest_mw.testing import (
    FAKE_ACCESS_TOKEN,
    FAKE_AD_ACCOUNT_ID,
    FakePinterestAPI,
    serve_fake_api,
)
from pinterest_mw.transport import WITHHELD_MESSAGE, Transport

DAY = 24 * 3600
CREDENTIALS = {
    "PINTEREST_ACCESS_TOKEN": FAKE_ACCESS_TOKEN,
    "PINTEREST_AD_ACCOUNT_ID": FAKE_AD_ACCOUNT_ID,
}
STARTUP_TIMEOUT = 30.0


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PINTEREST_* variable of the developer's leaks in; files go to tmp_path."""
    for name in list(os.environ):
        if name.startswith(("PINTEREST_", "_PINTEREST")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def cli() -> Any:
    runner = CliRunner()
    app = build_app()

    def invoke(
        *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> Any:
        return runner.invoke(app, list(args), env=env, input=stdin)

    return invoke


def write_csv(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def mixed_csv(tmp_path: Path) -> Path:
    """Two good rows (lines 2 and 5) and two bad ones (lines 3 and 4)."""
    now = int(time.time())
    return write_csv(
        tmp_path / "orders.csv",
        "event_name,event_time,email,value,currency,order_id",
        f"checkout,{now},Ann@Example.com,19.99,usd,A1",
        f"checkout,{now - 10 * DAY},bob@example.com,5,USD,A2",
        f"checkout,{now},carl@example.com,lots,USD,A3",
        f"checkout,{now},dana@example.com,7,USD,A4",
    )


@pytest.fixture
def good_csv(tmp_path: Path) -> Path:
    """Two good rows, each with its event_id, as the README asks."""
    now = int(time.time())
    return write_csv(
        tmp_path / "good.csv",
        "event_name,event_time,event_id,email",
        f"checkout,{now},order-1,ann@example.com",
        f"lead,{now - DAY},lead-1,bob@example.com",
    )


# --- hash ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "normalized"),
    [
        (["email", "  Ann@Example.COM "], "ann@example.com"),
        (["em", "ann@example.com"], "ann@example.com"),
        (["phone", "(650) 555-1212", "--default-region", "US"], "16505551212"),
        (["zip_code", "94025-1234"], "94025"),
        (["country", "United States"], "us"),
    ],
)
def test_hash_prints_the_normalized_value_and_its_sha256(cli, args, normalized):
    result = cli("hash", *args)

    assert result.exit_code == EXIT_OK
    assert f"normalized: {normalized}" in result.stdout
    assert f"sha256: {sha256(normalized)}" in result.stdout


def test_hash_of_a_phone_without_a_region_warns_on_stderr(cli):
    """`validate` warns about it; `hash` must too, or the digest misleads."""
    result = cli("hash", "phone", "415 555 0100")

    assert result.exit_code == EXIT_OK
    assert result.stderr.startswith("pinterest-mw: warning: phone (ph): ")
    assert "country code" in result.stderr
    assert "415" not in result.stderr
    assert "sha256: " in result.stdout


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--region", "US"], {}),
        (["--default-region", "us"], {}),
        ([], {"PINTEREST_DEFAULT_REGION": "US"}),
    ],
)
def test_hash_of_a_phone_with_a_region_does_not_warn(cli, args, env):
    result = cli("hash", "phone", "415 555 0100", *args, env=env)

    assert result.stderr == ""
    assert "normalized: 14155550100" in result.stdout


def test_hash_of_an_unusable_value_says_why_and_exits_1(cli):
    result = cli("hash", "email", "not-an-email")

    assert result.exit_code == EXIT_ROWS_FAILED
    assert "dropped: not an email address" in result.stdout
    assert "sha256" not in result.stdout


def test_hash_of_an_already_hashed_value_shows_it_lowercased(cli):
    digest = sha256("ann@example.com")

    result = cli("hash", "email", digest.upper())

    assert result.exit_code == EXIT_OK
    assert "already hashed" in result.stdout
    assert f"sha256: {digest}" in result.stdout


def test_hash_of_an_unhashed_field_shows_what_is_sent(cli):
    result = cli("hash", "client_ip_address", "203.0.113.9:443")

    assert result.exit_code == EXIT_OK
    assert "sent unhashed" in result.stdout
    assert "normalized: 203.0.113.9" in result.stdout


def test_hash_of_an_unknown_field_is_an_error(cli):
    result = cli("hash", "shoe_size", "42")

    assert result.exit_code == EXIT_ERROR
    assert result.stderr.startswith("pinterest-mw: error: unknown user data field")


def test_hash_refuses_an_unknown_default_region(cli):
    result = cli("hash", "phone", "5551212", "--default-region", "XX")

    assert result.exit_code == EXIT_ERROR
    assert "--default-region" in result.stderr


def test_hash_reads_the_default_region_from_the_environment(cli):
    result = cli(
        "hash", "phone", "(650) 555-1212", env={"PINTEREST_DEFAULT_REGION": "us"}
    )

    assert result.exit_code == EXIT_OK
    assert "normalized: 16505551212" in result.stdout


def test_an_unknown_default_region_in_the_environment_is_one_line(cli):
    result = cli(
        "hash", "phone", "6505551212", env={"PINTEREST_DEFAULT_REGION": "Mars"}
    )

    assert result.exit_code == EXIT_ERROR
    assert result.stderr.count("\n") == 1
    assert "PINTEREST_DEFAULT_REGION" in result.stderr


# --- validate -----------------------------------------------------------------


def test_validate_of_a_good_file_exits_0(cli, good_csv):
    result = cli("validate", str(good_csv))

    assert result.exit_code == EXIT_OK
    assert "2 rows: 2 valid, 0 invalid" in result.stdout


def test_validate_reports_each_bad_row_by_line_and_field(cli, mixed_csv):
    result = cli("validate", str(mixed_csv))

    assert result.exit_code == EXIT_ROWS_FAILED
    assert "line 3: invalid: event_time: is more than 7 days in the past" in (
        result.stderr
    )
    assert "line 4: invalid: custom_data.value:" in result.stderr
    assert "4 rows: 2 valid, 2 invalid" in result.stdout


def test_validate_reports_field_paths_never_values(cli, tmp_path):
    now = int(time.time())
    path = write_csv(
        tmp_path / "secret.csv",
        "event_name,event_time,email,phone,value",
        f"checkout,{now},secret-person-at-example.com,+1 650 555 0000,priceless",
    )

    result = cli("validate", str(path), "--report", str(tmp_path / "r.csv"))

    everything = result.output + (tmp_path / "r.csv").read_text()
    assert result.exit_code == EXIT_ROWS_FAILED
    assert "user_data.email" in result.stderr
    for value in ("secret-person", "650 555 0000", "16505550000", "priceless"):
        assert value not in everything


def test_validate_writes_every_problem_to_the_report_file(cli, tmp_path):
    now = int(time.time())
    rows = [f"checkout,{now},bad-email-{i}" for i in range(30)]
    path = write_csv(tmp_path / "many.csv", "event_name,event_time,email", *rows)
    report = tmp_path / "report.csv"

    result = cli("validate", str(path), "--report", str(report))

    lines = report.read_text().splitlines()
    assert lines[0] == "line,status,field,message"
    assert len([line for line in lines if ",invalid,user_data," in line]) == 30
    assert f"more problems, in {report}" in result.stderr


def test_validate_explains_a_dropped_value_behind_a_failed_row(cli, tmp_path):
    now = int(time.time())
    path = write_csv(
        tmp_path / "bad.csv", "event_name,event_time,email", f"checkout,{now},nope"
    )

    result = cli("validate", str(path))

    assert (
        "line 2: invalid: user_data.email: dropped: not an email address"
        in result.stderr
    )


def test_validate_reads_json_lines_with_nested_and_dotted_keys(cli, tmp_path):
    now = int(time.time())
    documents = [
        {
            "event_name": "checkout",
            "event_time": now,
            "user_data": {"em": ["ann@example.com"]},
            "custom_data.value": "10",
            "currency": "EUR",
        },
        {"event_name": "checkout", "event_time": now, "email": "b@example.com"},
        {"event_name": "checkout", "event_time": now, "shoe_size": 42},
        "not an object",
    ]
    path = tmp_path / "events.jsonl"
    path.write_text(
        "\n".join(json.dumps(d) for d in documents) + "\n{broken\n", encoding="utf-8"
    )

    result = cli("validate", str(path))

    assert result.exit_code == EXIT_ROWS_FAILED
    assert "5 rows: 2 valid, 3 invalid" in result.stdout
    assert "line 3: invalid: key 3 is an unknown key, not an event field" in (
        result.stderr
    )
    assert "shoe_size" not in result.stderr
    assert "line 4: invalid: is not a JSON object" in result.stderr
    assert "line 5: invalid: is not valid JSON" in result.stderr


def test_validate_builds_lists_from_indexed_columns(cli, tmp_path):
    now = int(time.time())
    path = write_csv(
        tmp_path / "items.csv",
        "event_name,event_time,email,custom_data.contents.0.item_price,"
        "custom_data.contents.1.item_price,content_ids.0",
        f"checkout,{now},a@example.com,1.50,oops,sku-1",
    )

    result = cli("validate", str(path))

    assert "line 2: invalid: custom_data.contents.1.item_price:" in result.stderr
    assert "contents.0" not in result.stderr


def test_map_renames_their_columns_and_drops_others(cli, tmp_path):
    now = int(time.time())
    path = write_csv(
        tmp_path / "theirs.csv",
        "Kind,When,E-Mail Address,Customer Name",
        f"checkout,{now},ann@example.com,Ann",
    )

    result = cli(
        "validate",
        str(path),
        "--map",
        "Kind=event_name",
        "--map",
        "When=event_time",
        "--map",
        "E-Mail Address=email",
        "--map",
        "Customer Name=",
    )

    assert result.exit_code == EXIT_OK


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ("no-equals-sign", "must be written THEIR_COLUMN=field"),
        ("=email", "must be written THEIR_COLUMN=field"),
        ("Size=shoe_size", "'shoe_size' is not an event field"),
    ],
)
def test_a_map_that_cannot_work_is_an_error(cli, good_csv, item, problem):
    result = cli("validate", str(good_csv), "--map", item)

    assert result.exit_code == EXIT_ERROR
    assert problem in result.stderr


def test_a_row_with_more_cells_than_the_header_is_invalid(cli, tmp_path):
    now = int(time.time())
    path = write_csv(
        tmp_path / "x.csv", "event_name,event_time,email", f"lead,{now},a@b.co,extra"
    )

    result = cli("validate", str(path))

    assert "line 2: invalid: has 4 cells; the header has 3" in result.stderr


def test_json_keys_that_set_one_field_twice_make_the_row_invalid(cli, tmp_path):
    now = int(time.time())
    document = {"event_name": "lead", "event_time": now, "value": "1"}
    document["custom_data.value"] = "2"
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(document) + "\n", encoding="utf-8")

    result = cli("validate", str(path))

    assert "custom_data.value: sets a field another key already set" in (result.stderr)


def test_an_unknown_column_stops_with_the_map_option_to_use(cli, tmp_path):
    """The column is named by position: a header cell may be data."""
    path = write_csv(tmp_path / "x.csv", "event_name,event_time,Shoe Size", "a,1,2")

    result = cli("validate", str(path))

    assert result.exit_code == EXIT_ERROR
    assert result.stderr == (
        "pinterest-mw: error: column 3 of the header is not an event field:"
        " rename it with --map 'HEADER=FIELD' or leave it out with --map 'HEADER='\n"
    )


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("event_name,email", "no event_time column"),
        ("event_time,email", "no event_name column"),
        ("event_name,event_time,value,custom_data.value", "set the same field"),
    ],
)
def test_a_header_that_cannot_work_is_an_error(cli, tmp_path, header, problem):
    path = write_csv(tmp_path / "x.csv", header, "a,1,2,3")

    result = cli("validate", str(path))

    assert result.exit_code == EXIT_ERROR
    assert problem in result.stderr


def test_event_name_option_fills_rows_without_one(cli, tmp_path):
    now = int(time.time())
    path = write_csv(tmp_path / "x.csv", "event_time,email", f"{now},a@example.com")

    result = cli("validate", str(path), "--event-name", "lead")

    assert result.exit_code == EXIT_OK


def test_validate_reads_standard_input_in_the_format_given(cli):
    now = int(time.time())
    lines = [
        json.dumps({"event_name": "lead", "event_time": now, "email": "a@b.co"}),
        json.dumps({"event_name": "lead", "event_time": now}),
    ]

    result = cli("validate", "-", "--format", "jsonl", stdin="\n".join(lines))

    assert result.exit_code == EXIT_ROWS_FAILED
    assert "2 rows: 1 valid, 1 invalid" in result.stdout


def test_a_tsv_file_is_read_with_tabs(cli, tmp_path):
    now = int(time.time())
    path = tmp_path / "x.tsv"
    path.write_text(f"event_name\tevent_time\temail\nlead\t{now}\ta@b.co\n")

    result = cli("validate", str(path))

    assert result.exit_code == EXIT_OK


def test_a_missing_file_is_a_one_line_error(cli):
    result = cli("validate", "missing.csv")

    assert result.exit_code == EXIT_ERROR
    assert result.stderr == (
        "pinterest-mw: error: No such file or directory: missing.csv\n"
    )


def test_a_file_that_is_not_utf8_is_an_error(cli, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"event_name,event_time,email\ncheckout,1,j\xe9@example.com\n")

    result = cli("validate", str(path))

    assert result.exit_code == EXIT_ERROR
    assert "is not UTF-8 text" in result.stderr


def test_a_format_the_name_does_not_tell_must_be_given(cli, tmp_path):
    (tmp_path / "events.data").write_text("", encoding="utf-8")

    result = cli("validate", "events.data")

    assert result.exit_code == EXIT_ERROR
    assert "--format" in result.stderr


@pytest.mark.parametrize("content", ["", "event_name,event_time,email\n", "\n\n"])
def test_a_file_without_rows_is_an_error(cli, tmp_path, content):
    """An empty export is more likely a mistake than a day without orders."""
    (tmp_path / "empty.csv").write_text(content, encoding="utf-8")

    result = cli("validate", "empty.csv")

    assert result.exit_code == EXIT_ERROR
    assert result.stdout == ""
    assert result.stderr == (
        "pinterest-mw: error: 'empty.csv' has no rows: nothing to check\n"
    )


def test_a_jsonl_file_without_rows_is_an_error_for_send_too(
    cli, tmp_path, fake_pinterest
):
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")

    result = cli("send", "empty.jsonl", env=CREDENTIALS)

    assert result.exit_code == EXIT_ERROR
    assert "'empty.jsonl' has no rows: nothing to send" in result.stderr
    assert fake_pinterest.requests == []


def test_counts_of_one_are_singular(cli, tmp_path, fake_pinterest):
    now = int(time.time())
    path = write_csv(
        tmp_path / "one.csv", "event_name,event_time,email", f"lead,{now},a@b.co"
    )

    result = cli("send", str(path), env=CREDENTIALS)

    assert result.stdout.startswith("1 row: 1 valid, 0 invalid; ")
    assert "(1 request)" in result.stdout


def test_the_region_for_phones_comes_from_the_environment_in_validate(cli, tmp_path):
    """Without a region, a phone number without a country code is dropped."""
    now = int(time.time())
    path = write_csv(
        tmp_path / "phones.csv",
        "event_name,event_time,email,phone",
        f"lead,{now},a@b.co,6505551212",
    )

    without = cli("validate", str(path))
    with_region = cli("validate", str(path), env={"PINTEREST_DEFAULT_REGION": "US"})

    assert "line 2: warning: user_data.phone" in without.stderr
    assert with_region.stderr == ""
    assert with_region.stdout == "1 row: 1 valid, 0 invalid\n"


# --- send ---------------------------------------------------------------------


def test_send_without_credentials_names_what_to_set(cli, good_csv):
    result = cli("send", str(good_csv))

    assert result.exit_code == EXIT_ERROR
    assert "PINTEREST_ACCESS_TOKEN" in result.stderr
    assert "PINTEREST_AD_ACCOUNT_ID" in result.stderr


@pytest.mark.parametrize(
    ("missing", "named", "not_named"),
    [
        ("PINTEREST_ACCESS_TOKEN", "PINTEREST_ACCESS_TOKEN", "PINTEREST_AD_ACCOUNT"),
        ("PINTEREST_AD_ACCOUNT_ID", "PINTEREST_AD_ACCOUNT_ID", "PINTEREST_ACCESS"),
    ],
)
def test_send_names_only_the_credential_that_is_missing(
    cli, good_csv, missing, named, not_named
):
    env = {**CREDENTIALS, missing: "  "}

    result = cli("send", str(good_csv), env=env)

    assert result.exit_code == EXIT_ERROR
    assert result.stderr.count("\n") == 1
    assert named in result.stderr
    assert not_named not in result.stderr
    assert FAKE_ACCESS_TOKEN not in result.output


def test_send_trims_spaces_around_the_ad_account_id(cli, good_csv, fake_pinterest):
    env = {**CREDENTIALS, "PINTEREST_AD_ACCOUNT_ID": f" {FAKE_AD_ACCOUNT_ID} \n"}

    result = cli("send", str(good_csv), env=env)

    assert result.exit_code == EXIT_OK
    assert len(fake_pinterest.events) == 2


def test_send_reads_test_mode_from_the_environment(cli, good_csv, fake_pinterest):
    result = cli(
        "send", str(good_csv), env={**CREDENTIALS, "PINTEREST_TEST_MODE": "yes"}
    )

    assert result.exit_code == EXIT_OK
    assert len(fake_pinterest.test_events) == 2


def test_no_test_overrides_test_mode_from_the_environment(
    cli, good_csv, fake_pinterest
):
    env = {**CREDENTIALS, "PINTEREST_TEST_MODE": "1"}

    result = cli("send", str(good_csv), "--no-test", env=env)

    assert result.exit_code == EXIT_OK
    assert len(fake_pinterest.events) == 2


def test_a_bad_test_mode_in_the_environment_is_one_line(cli, good_csv, fake_pinterest):
    env = {**CREDENTIALS, "PINTEREST_TEST_MODE": "maybe"}

    result = cli("send", str(good_csv), env=env)

    assert result.exit_code == EXIT_ERROR
    assert result.stderr == (
        "pinterest-mw: error: PINTEREST_TEST_MODE must be one of"
        " 1, true, yes, on, 0, false, no, off\n"
    )
    assert fake_pinterest.requests == []


def test_a_bad_ad_account_names_the_option_not_the_token(cli, good_csv):
    env = {**CREDENTIALS, "PINTEREST_AD_ACCOUNT_ID": "not-digits"}

    result = cli("send", str(good_csv), env=env)

    assert result.exit_code == EXIT_ERROR
    assert "--ad-account-id or PINTEREST_AD_ACCOUNT_ID" in result.stderr
    assert FAKE_ACCESS_TOKEN not in result.output


def test_send_of_good_and_bad_rows_sends_the_good_and_exits_1(
    cli, mixed_csv, fake_pinterest
):
    result = cli("send", str(mixed_csv), env=CREDENTIALS)

    assert result.exit_code == EXIT_ROWS_FAILED
    sent = [event["user_data"]["em"] for event in fake_pinterest.events]
    assert sent == [[sha256("ann@example.com")], [sha256("dana@example.com")]]
    assert "line 3: invalid: event_time" in result.stderr
    assert "2 processed, 0 rejected by Pinterest, 0 not sent" in result.stdout


def test_send_of_a_good_file_exits_0(cli, good_csv, fake_pinterest):
    result = cli("send", str(good_csv), env=CREDENTIALS)

    assert result.exit_code == EXIT_OK
    assert len(fake_pinterest.events) == 2


def test_send_uses_offline_as_the_default_action_source(cli, good_csv, fake_pinterest):
    cli("send", str(good_csv), env=CREDENTIALS)

    assert {e["action_source"] for e in fake_pinterest.events} == {"offline"}


def test_send_dry_run_checks_and_sends_nothing(cli, mixed_csv, fake_pinterest):
    result = cli("send", str(mixed_csv), "--dry-run", env=CREDENTIALS)

    assert result.exit_code == EXIT_ROWS_FAILED
    assert fake_pinterest.requests == []
    assert "dry run: nothing sent" in result.stdout


def test_send_test_goes_to_pinterests_test_mode(cli, good_csv, fake_pinterest):
    result = cli("send", str(good_csv), "--test", env=CREDENTIALS)

    assert result.exit_code == EXIT_OK
    assert len(fake_pinterest.test_events) == 2
    assert fake_pinterest.events == []


def test_send_reports_rows_pinterest_rejected(cli, tmp_path, httpx_mock: HTTPXMock):
    """Pinterest's clock a day ahead: a 6.5-day-old row is too old for it."""
    fake = FakePinterestAPI(clock=lambda: time.time() + DAY)
    httpx_mock.add_callback(fake.handle, is_reusable=True)
    now = int(time.time())
    path = write_csv(
        tmp_path / "x.csv",
        "event_name,event_time,email",
        f"checkout,{now},a@example.com",
        f"checkout,{now - int(6.5 * DAY)},b@example.com",
    )

    result = cli("send", str(path), env=CREDENTIALS)

    assert result.exit_code == EXIT_ROWS_FAILED
    assert "line 3: rejected: Pinterest: Invalid event_timestamp" in result.stderr
    assert "1 processed, 1 rejected by Pinterest" in result.stdout


def test_send_reports_rows_pinterests_answer_left_unconfirmed(
    cli, tmp_path, httpx_mock: HTTPXMock
):
    """A 200 without a result per event: the rows are neither sent again nor failed."""
    httpx_mock.add_response(json={"num_events_received": 2})
    now = int(time.time())
    path = write_csv(
        tmp_path / "x.csv",
        "event_name,event_time,email",
        f"checkout,{now},a@example.com",
        f"checkout,{now},b@example.com",
    )

    result = cli("send", str(path), env=CREDENTIALS)

    assert result.exit_code == EXIT_OK
    assert "line 3: warning: unconfirmed: Pinterest took the request" in result.stderr
    assert (
        "0 processed, 0 rejected by Pinterest, 0 not sent (1 request); 2 unconfirmed"
        in (result.stdout)
    )
    assert len(httpx_mock.get_requests()) == 1


def test_send_reports_pinterests_warnings_without_failing(
    cli, tmp_path, fake_pinterest
):
    now = int(time.time())
    path = write_csv(
        tmp_path / "x.csv", "event_name,event_time,email", f"my_own_event,{now},a@b.co"
    )

    result = cli("send", str(path), env=CREDENTIALS)

    assert result.exit_code == EXIT_OK
    assert "line 2: warning: Pinterest: event_name is not a standard" in (result.stderr)


def test_send_posts_at_most_1000_events_per_request(cli, tmp_path, fake_pinterest):
    now = int(time.time())
    rows = [f"checkout,{now},{i},buyer{i}@example.com" for i in range(2001)]
    path = write_csv(
        tmp_path / "big.csv", "event_name,event_time,event_id,email", *rows
    )

    result = cli("send", str(path), env=CREDENTIALS)

    assert result.exit_code == EXIT_OK
    assert [len(r.event_ids()) for r in fake_pinterest.requests] == [1000, 1000, 1]


def test_an_authentication_failure_stops_with_status_2(
    cli, good_csv, fake_pinterest, caplog
):
    env = {**CREDENTIALS, "PINTEREST_ACCESS_TOKEN": "pina_wrong-token"}

    result = cli("send", str(good_csv), env=env)

    assert result.exit_code == EXIT_ERROR
    assert "Pinterest answered 401" in result.stderr
    assert "pina_wrong-token" not in result.output + caplog.text


def test_a_refused_request_reports_its_rows_as_not_sent(cli, good_csv, fake_pinterest):
    fake_pinterest.fail_next(1, status=400)

    result = cli("send", str(good_csv), env=CREDENTIALS)

    assert result.exit_code == EXIT_ERROR
    assert "line 2: not_sent: request failed: Pinterest answered 400" in (result.stderr)
    assert "0 processed, 0 rejected by Pinterest, 2 not sent" in result.stdout
    assert result.stderr.splitlines()[-1] == (
        "pinterest-mw: error: the request for lines 2 to 3 failed: Pinterest"
        " answered 400 (code 4196): The request was invalid; nothing was sent"
    )


def test_a_failed_last_request_does_not_speak_of_rows_after_it(
    cli, good_csv, fake_pinterest
):
    env = {**CREDENTIALS, "PINTEREST_ACCESS_TOKEN": "pina_wrong-token"}

    result = cli("send", str(good_csv), env=env)

    assert result.stderr.splitlines()[-1] == (
        "pinterest-mw: error: the request for lines 2 to 3 failed: Pinterest"
        " answered 401 (code 2): Authentication failed; nothing was sent"
    )


def test_a_failed_full_request_says_the_rows_after_it_were_not_read(
    cli, tmp_path, fake_pinterest
):
    fake_pinterest.fail_next(1, status=400)
    path = rows_then(tmp_path, 1500, b"")

    result = cli("send", str(path), env=CREDENTIALS)

    assert len(fake_pinterest.requests) == 1
    assert result.stderr.splitlines()[-1] == (
        "pinterest-mw: error: the request for lines 2 to 1001 failed: Pinterest"
        " answered 400 (code 4196): The request was invalid; any rows after line"
        " 1001 were not read; nothing was sent"
    )


def test_a_failed_request_after_a_break_names_both(cli, tmp_path, fake_pinterest):
    fake_pinterest.fail_next(1, status=400)
    path = rows_then(tmp_path, 2, BREAKS["not-utf8"])

    result = cli("send", str(path), env=CREDENTIALS)

    assert result.stderr.splitlines()[-1] == (
        "pinterest-mw: error: the request for lines 2 to 3 failed: Pinterest"
        " answered 400 (code 4196): The request was invalid; stopped at line 4:"
        " the line is not UTF-8 text; nothing was sent"
    )


def test_send_never_prints_or_logs_user_data(cli, tmp_path, fake_pinterest, caplog):
    caplog.set_level("DEBUG")
    now = int(time.time())
    path = write_csv(
        tmp_path / "x.csv",
        "event_name,event_time,email,phone,client_ip_address",
        f"checkout,{now},private.person@example.com,+44 20 7946 0958,203.0.113.77",
        f"checkout,{now},private.person@example.com,+44 20 7946 0958,bad-ip",
    )

    result = cli("send", str(path), env=CREDENTIALS)

    everything = result.output + caplog.text
    assert result.exit_code == EXIT_OK
    for value in (
        "private.person",
        sha256("private.person@example.com"),
        "7946",
        "203.0.113.77",
        FAKE_ACCESS_TOKEN,
    ):
        assert value not in everything


# --- a file that breaks, resuming, event ids ------------------------------------


def rows_then(tmp_path: Path, count: int, tail: bytes, *, name: str = "x.csv") -> Path:
    """A CSV file of `count` good rows (lines 2 to count + 1), then `tail`."""
    now = int(time.time())
    lines = ["event_name,event_time,email"]
    lines += [f"checkout,{now},buyer{i}@example.com" for i in range(count)]
    path = tmp_path / name
    path.write_bytes(("\n".join(lines) + "\n").encode() + tail)
    return path


BREAKS = {
    "over-the-field-limit": b'checkout,1,"' + b"x" * 200_000 + b'"\n',
    "a-line-over-the-limit": b"checkout,1," + b"x," * 70_000 + b"\n",
    "not-utf8": b"checkout,1,j\xe9@example.com\n",
}


@pytest.mark.parametrize("tail", BREAKS.values(), ids=BREAKS.keys())
def test_send_of_a_file_that_breaks_sends_every_row_before_the_break(
    cli, tmp_path, fake_pinterest, tail
):
    """1500 rows: the last 500 would be lost with a chunk thrown away."""
    path = rows_then(tmp_path, 1500, tail + b"checkout,1,after@example.com\n")

    result = cli("send", str(path), env=CREDENTIALS)

    assert result.exit_code == EXIT_ERROR
    assert [len(r.event_ids()) for r in fake_pinterest.requests] == [1000, 500]
    assert result.stdout.startswith("1500 rows: 1500 valid, 0 invalid; 1500 processed")
    assert result.stderr.splitlines()[-1].startswith(
        "pinterest-mw: error: stopped at line 1502: "
    )
    assert result.stderr.endswith(
        "; 1500 rows were sent, the last from line 1501:"
        " re-run with --start-line 1502 to skip them\n"
    )


def test_a_jsonl_file_that_breaks_sends_every_row_before_the_break(
    cli, tmp_path, fake_pinterest
):
    now = int(time.time())
    good = [
        json.dumps({"event_name": "lead", "event_time": now, "email": f"b{i}@x.co"})
        for i in range(3)
    ]
    path = tmp_path / "x.jsonl"
    path.write_bytes("\n".join(good).encode() + b'\n{"email": "\xff"}\n')

    result = cli("send", str(path), env=CREDENTIALS)

    assert result.exit_code == EXIT_ERROR
    assert len(fake_pinterest.events) == 3
    assert "stopped at line 4: the line is not UTF-8 text; 3 rows were sent" in (
        result.stderr
    )


def test_validate_of_a_file_that_breaks_says_where_and_what_it_checked(cli, tmp_path):
    path = rows_then(tmp_path, 2, BREAKS["not-utf8"])

    result = cli("validate", str(path))

    assert result.exit_code == EXIT_ERROR
    assert result.stdout == "2 rows: 2 valid, 0 invalid\n"
    assert result.stderr == (
        "pinterest-mw: error: stopped at line 4: the line is not UTF-8 text;"
        " the 2 rows before it were checked\n"
    )


def test_a_jsonl_line_over_the_limit_stops_before_it_is_read_whole(
    cli, tmp_path, fake_pinterest
):
    """CSV and JSON Lines share the line limit; the rows before it are sent."""
    now = int(time.time())
    good = json.dumps({"event_name": "lead", "event_time": now, "email": "a@x.co"})
    huge = json.dumps({"event_name": "lead", "event_time": now, "x": "y" * 300_000})
    path = tmp_path / "x.jsonl"
    path.write_text(f"{good}\n{huge}\n{good}\n", encoding="utf-8")

    result = cli("send", str(path), env=CREDENTIALS)

    assert result.exit_code == EXIT_ERROR
    assert len(fake_pinterest.events) == 1
    assert result.stderr.splitlines()[-1] == (
        "pinterest-mw: error: stopped at line 2: the line is longer than 131072"
        " characters; 1 row was sent, the last from line 1: re-run with"
        " --start-line 2 to skip them"
    )


def csv_of(tmp_path: Path, *rows: str) -> Path:
    """A CSV file with a first_name column; `rows` as they are, with NOW filled in."""
    now = str(int(time.time()))
    lines = ["event_name,event_time,email,first_name"]
    lines += [row.replace("NOW", now) for row in rows]
    path = tmp_path / "people.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_an_unclosed_quote_stops_at_its_row_and_sends_nothing_after_it(
    cli, tmp_path, fake_pinterest
):
    """The rows after the quote would otherwise become one first name."""
    path = csv_of(
        tmp_path,
        "checkout,NOW,a@example.com,Ann",
        'checkout,NOW,b@example.com,"Jane',
        "checkout,NOW,c@example.com,Carl",
        "checkout,NOW,d@example.com,Dan",
    )

    result = cli("send", str(path), env=CREDENTIALS)

    assert result.exit_code == EXIT_ERROR
    assert [e["user_data"]["em"] for e in fake_pinterest.events] == [
        [sha256("a@example.com")]
    ]
    assert result.stderr.splitlines()[-1] == (
        "pinterest-mw: error: stopped at line 3: the row that starts on this line"
        " opens a quote that is never closed; 1 row was sent, the last from line"
        " 2: re-run with --start-line 3 to skip them"
    )


def test_validate_of_an_unclosed_quote_names_its_line(cli, tmp_path):
    path = csv_of(
        tmp_path,
        'checkout,NOW,a@example.com,"Jane',
        "checkout,NOW,b@example.com,Bob",
    )

    result = cli("validate", str(path))

    assert result.exit_code == EXIT_ERROR
    assert result.stdout == ""
    assert result.stderr == (
        "pinterest-mw: error: stopped at line 2: the row that starts on this line"
        " opens a quote that is never closed; no row came before it\n"
    )


def test_a_quote_that_runs_past_the_limit_stops_at_the_line_it_opens(cli, tmp_path):
    """Closed at last by a doubled quote, but 200 KiB of rows later."""
    rows = [f"checkout,NOW,x{i}@example.com,Xavier" for i in range(5000)]
    path = csv_of(
        tmp_path,
        "checkout,NOW,a@example.com,Ann",
        'checkout,NOW,b@example.com,"Jane',
        *rows,
        'checkout,NOW,z@example.com,Zoe"',
    )

    result = cli("validate", str(path))

    assert result.exit_code == EXIT_ERROR
    assert result.stderr == (
        "pinterest-mw: error: stopped at line 3: the row that starts on this line"
        " runs over several lines and past 131072 characters, as when a closing"
        " quote is missing; the 1 row before it was checked\n"
    )


def test_a_quoted_cell_over_several_lines_is_read_with_a_warning(cli, tmp_path):
    """A line break in a cell is valid CSV; where the row ends is said."""
    path = csv_of(
        tmp_path,
        'checkout,NOW,a@example.com,"Ann\nMarie"',
        "checkout,NOW,b@example.com,Bob",
    )

    result = cli("validate", str(path))

    assert result.exit_code == EXIT_OK
    assert result.stdout == "2 rows: 2 valid, 0 invalid; warnings: 1\n"
    assert result.stderr.startswith(
        "line 2: warning: the row runs on to line 3: a quoted cell holds line breaks"
    )


def test_a_quote_closed_rows_later_amid_a_cell_names_both_lines(cli, tmp_path):
    path = csv_of(
        tmp_path,
        'checkout,NOW,a@example.com,"Jane',
        'checkout,NOW,b@example.com,"Bob"by',
    )

    result = cli("validate", str(path))

    assert result.exit_code == EXIT_ERROR
    assert result.stderr == (
        "pinterest-mw: error: stopped at line 2: not valid CSV (',' expected"
        " after '\"') in the row that runs from this line to line 3, as when a"
        " closing quote is missing; no row came before it\n"
    )


def test_a_header_with_an_unclosed_quote_is_an_error_naming_line_1(cli, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text('event_name,"event_time\nlead,1\n', encoding="utf-8")

    result = cli("validate", str(path))

    assert result.exit_code == EXIT_ERROR
    assert result.stderr == (
        "pinterest-mw: error: line 1: not a valid CSV header: the row that starts"
        " on this line opens a quote that is never closed\n"
    )


def test_a_stray_quote_in_a_row_stops_at_that_row(cli, tmp_path):
    path = csv_of(
        tmp_path, "checkout,NOW,a@example.com,Ann", 'checkout,NOW,b@example.com,"B"ob'
    )

    result = cli("validate", str(path))

    assert result.exit_code == EXIT_ERROR
    assert result.stderr == (
        "pinterest-mw: error: stopped at line 3: not valid CSV (',' expected after"
        " '\"'); the 1 row before it was checked\n"
    )


class _TestRunnerTerminated(Exception):
    """What SIGTERM raises in this test process when the command leaves it be."""


@pytest.fixture
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises an exception here, instead of ending the test run."""

    def raise_it(signal_number: int, frame: object) -> None:
        raise _TestRunnerTerminated

    previous = signal.signal(signal.SIGTERM, raise_it)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_a_terminated_validate_is_one_line_and_exits_143(
    cli, good_csv, monkeypatch, sigterm_raises
):
    def terminate(*args: object, **kwargs: object) -> None:
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr("pinterest_mw.cli.parse_event", terminate)

    result = cli("validate", str(good_csv))

    assert result.exit_code == EXIT_TERMINATED
    assert result.stderr == "pinterest-mw: error: terminated\n"
    assert signal.getsignal(signal.SIGTERM).__name__ == "raise_it"


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Callable[[bytes], Path]]:
    """A named pipe that a thread fills with the bytes given, as `<(...)` does."""
    path = tmp_path / "rows.pipe"
    os.mkfifo(path)
    writers: list[threading.Thread] = []

    def fill(content: bytes) -> Path:
        def write() -> None:
            with path.open("wb") as pipe:  # blocks until the command opens it
                pipe.write(content)

        writers.append(threading.Thread(target=write, daemon=True))
        writers[-1].start()
        return path

    yield fill
    # A writer still waiting for a reader is released by opening the other end.
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    for writer in writers:
        writer.join(timeout=10)
    os.close(reader)


def test_validate_reads_a_named_pipe(cli, fifo):
    now = int(time.time())
    path = fifo(f"event_name,event_time,email\nlead,{now},a@b.co\n".encode())

    result = cli("validate", "--format", "csv", str(path))

    assert result.exit_code == EXIT_OK
    assert result.stdout == "1 row: 1 valid, 0 invalid\n"


def test_a_failed_request_says_what_was_sent_and_how_to_skip_it(
    cli, tmp_path, httpx_mock: HTTPXMock
):
    """The second request is refused: the first 1000 rows went out."""
    fake = FakePinterestAPI()
    answered: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        answered.append(1)
        if len(answered) == 2:
            fake.fail_next(1, status=400)
        return fake.handle(request)

    httpx_mock.add_callback(answer, is_reusable=True)
    path = rows_then(tmp_path, 1001, b"")

    result = cli("send", str(path), env=CREDENTIALS)

    assert result.exit_code == EXIT_ERROR
    assert len(fake.events) == 1000
    assert "1000 processed, 0 rejected by Pinterest, 1 not sent (2 requests)" in (
        result.stdout
    )
    assert result.stderr.endswith(
        "; 1000 rows were sent, the last from line 1001:"
        " re-run with --start-line 1002 to skip them\n"
    )


def test_an_interrupted_send_says_what_was_sent(
    cli, tmp_path, fake_pinterest, monkeypatch
):
    """Ctrl-C during the second request: its rows may or may not have arrived."""
    send_batch = Transport.send_batch
    calls: list[int] = []

    def interrupt_the_second(self: Transport, batch: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return send_batch(self, batch, **kwargs)

    monkeypatch.setattr(Transport, "send_batch", interrupt_the_second)
    path = rows_then(tmp_path, 1001, b"")

    result = cli("send", str(path), env=CREDENTIALS)

    assert result.exit_code == EXIT_INTERRUPTED
    assert result.stderr.splitlines()[-1] == (
        "pinterest-mw: error: interrupted at line 1002; 1000 rows were sent, the"
        " last from line 1001: re-run with --start-line 1002 to skip them; the"
        " 1 row of the request under way may have reached Pinterest (a re-run"
        " sends them with the same event ids)"
    )


def test_start_line_skips_the_rows_before_it(cli, tmp_path, fake_pinterest):
    path = rows_then(tmp_path, 3, b"")

    result = cli("send", str(path), "--start-line", "3", env=CREDENTIALS)

    assert result.exit_code == EXIT_OK
    assert [e["user_data"]["em"] for e in fake_pinterest.events] == [
        [sha256("buyer1@example.com")],
        [sha256("buyer2@example.com")],
    ]
    assert result.stdout.startswith(
        "2 rows: 2 valid, 0 invalid; 1 skipped before line 3;"
    )


def test_a_resumed_send_sends_what_a_whole_one_would_have(
    cli, tmp_path, fake_pinterest
):
    """The same ids, whether the file is sent at once or in two runs."""
    path = rows_then(tmp_path, 4, b"")
    cli("send", str(path), env=CREDENTIALS)
    whole = [e["event_id"] for e in fake_pinterest.events]
    fake_pinterest.reset()

    cli("send", str(path), "--start-line", "4", env=CREDENTIALS)

    assert [e["event_id"] for e in fake_pinterest.events] == whole[2:]


def test_start_line_past_the_last_row_is_an_error(cli, tmp_path, fake_pinterest):
    path = rows_then(tmp_path, 2, b"")

    result = cli("send", str(path), "--start-line", "9", env=CREDENTIALS)

    assert result.exit_code == EXIT_ERROR
    assert "has no rows from line 9 on: nothing to send" in result.stderr
    assert fake_pinterest.requests == []


def test_rows_without_an_event_id_get_the_same_id_on_every_run(
    cli, tmp_path, fake_pinterest
):
    path = rows_then(tmp_path, 3, b"")

    first = cli("send", str(path), env=CREDENTIALS)
    ids = [e["event_id"] for e in fake_pinterest.events]
    cli("send", str(path), env=CREDENTIALS)

    assert [e["event_id"] for e in fake_pinterest.events] == ids + ids
    assert len(set(ids)) == 3
    assert first.stderr.count("no event_id column") == 1


def test_identical_rows_on_two_lines_get_two_ids(cli, tmp_path, fake_pinterest):
    now = int(time.time())
    row = f"checkout,{now},ann@example.com"
    path = write_csv(tmp_path / "x.csv", "event_name,event_time,email", row, row)

    cli("send", str(path), env=CREDENTIALS)

    assert len({e["event_id"] for e in fake_pinterest.events}) == 2


def test_a_derived_event_id_is_a_uuid5_of_line_and_hashed_content(
    cli, tmp_path, fake_pinterest
):
    """Documented, so other tools can compute it: it never sees a raw value."""
    now = int(time.time())
    path = write_csv(
        tmp_path / "x.csv", "event_name,event_time,email", f"lead,{now},a@b.co"
    )

    cli("send", str(path), env=CREDENTIALS)

    [request] = fake_pinterest.requests
    [event_id] = request.event_ids()
    payload = request.body.removeprefix(b'{"data":[').removesuffix(b"]}")
    content = payload.replace(f'"event_id":"{event_id}"'.encode(), b'"event_id":""')
    expected = uuid.uuid5(ROW_ID_NAMESPACE, "2\n" + content.decode())
    assert event_id == str(expected)
    assert b"a@b.co" not in content


def test_rows_with_an_event_id_keep_it(cli, tmp_path, fake_pinterest):
    now = int(time.time())
    path = write_csv(
        tmp_path / "x.csv",
        "event_name,event_time,event_id,email",
        f"lead,{now},order-1,a@b.co",
        f"lead,{now},,b@b.co",
    )

    result = cli("send", str(path), env=CREDENTIALS)

    [kept, derived] = [e["event_id"] for e in fake_pinterest.events]
    assert kept == "order-1"
    assert uuid.UUID(derived).version == 5
    assert "line 3 has no event_id" in result.stderr
    assert "no event_id column" not in result.stderr


def test_validate_does_not_warn_about_event_ids(cli, tmp_path):
    path = rows_then(tmp_path, 1, b"")

    result = cli("validate", str(path))

    assert result.stderr == ""


# --- the report and the summary ------------------------------------------------------


def test_a_report_naming_the_input_is_refused_and_the_input_kept(cli, tmp_path):
    path = rows_then(tmp_path, 2, b"")
    content = path.read_bytes()
    (tmp_path / "same.csv").symlink_to(path)

    result = cli("validate", str(path), "--report", str(tmp_path / "same.csv"))

    assert result.exit_code == EXIT_ERROR
    assert result.stderr.count("\n") == 1
    assert "is the input file" in result.stderr
    assert path.read_bytes() == content


def test_the_report_is_not_created_when_the_input_cannot_be_opened(cli, tmp_path):
    result = cli("validate", "missing.csv", "--report", str(tmp_path / "r.csv"))

    assert result.exit_code == EXIT_ERROR
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("earlier", [None, "line,status,field,message\n9,old,,\n"])
def test_a_header_that_fails_leaves_the_report_as_it_was(cli, tmp_path, earlier):
    report = tmp_path / "r.csv"
    if earlier is not None:
        report.write_text(earlier, encoding="utf-8")
    path = write_csv(tmp_path / "x.csv", "event_name,shoe_size", "lead,42")

    result = cli("validate", str(path), "--report", str(report))

    assert result.exit_code == EXIT_ERROR
    assert report.exists() is (earlier is not None)
    if earlier is not None:
        assert report.read_text(encoding="utf-8") == earlier


def test_the_summary_counts_the_warnings_the_report_lists(cli, tmp_path):
    """Two valid rows with a warning each, and an invalid row with none."""
    now = int(time.time())
    path = write_csv(
        tmp_path / "x.csv",
        "event_name,event_time,email,phone",
        f"lead,{now},a@b.co,6505551212",
        f"lead,{now},a@b.co,6505551212",
        "lead,tomorrow,a@b.co,",
    )
    report = tmp_path / "r.csv"

    result = cli("validate", str(path), "--report", str(report))

    listed = [line for line in report.read_text().splitlines() if ",warning," in line]
    assert len(listed) == 2
    assert result.stdout.rstrip().endswith("; warnings: 2")


def test_a_refused_request_is_counted_as_a_request(cli, good_csv, fake_pinterest):
    env = {**CREDENTIALS, "PINTEREST_ACCESS_TOKEN": "pina_wrong-token"}

    result = cli("send", str(good_csv), env=env)

    assert "2 not sent (1 request)" in result.stdout
    assert len(fake_pinterest.requests) == 1


def test_our_reason_is_shown_though_a_value_of_the_row_is_one_of_its_words(
    cli, tmp_path
):
    """Our messages never repeat a value: the CLI no longer second-guesses
    them, and an order id "offset" no longer hides why event_time failed."""
    path = write_csv(
        tmp_path / "x.csv",
        "event_name,event_time,email,order_id",
        "checkout,yesterday,a@b.co,offset",
    )

    result = cli("validate", str(path))

    assert "line 2: invalid: event_time: must be Unix seconds" in result.stderr


def test_a_value_in_the_wrong_column_is_not_quoted_by_the_report(cli, tmp_path):
    """Columns shifted: an email lands in event_name."""
    now = int(time.time())
    path = write_csv(
        tmp_path / "shifted.csv",
        "email,event_name,event_time",
        f"checkout,jane.doe@example.com,{now}",
    )
    report = tmp_path / "r.csv"

    result = cli("validate", str(path), "--report", str(report))

    assert result.exit_code == EXIT_ROWS_FAILED
    assert "line 2: invalid: event_name: " in result.stderr
    assert "jane.doe" not in result.output + report.read_text()


def test_a_short_number_of_the_row_does_not_withhold_a_reason(cli, tmp_path):
    """7 items, and an event_time over 7 days old: the reason is still shown."""
    now = int(time.time())
    path = write_csv(
        tmp_path / "x.csv",
        "event_name,event_time,email,num_items",
        f"checkout,{now - 10 * DAY},a@b.co,7",
    )

    result = cli("validate", str(path))

    assert "line 2: invalid: event_time: is more than 7 days in the past" in (
        result.stderr
    )


def test_a_pinterest_message_repeating_what_was_sent_is_withheld(
    cli, good_csv, httpx_mock: HTTPXMock
):
    """Even hashed, an email is an identifier: Pinterest's echo of it is not shown."""

    def echo(request: httpx.Request) -> httpx.Response:
        events = json.loads(request.content)["data"]
        results = [
            {
                "status": "failed",
                "error_message": f"bad em {event['user_data']['em'][0]}",
                "warning_message": "",
            }
            for event in events
        ]
        body = {"num_events_received": 2, "num_events_processed": 0, "events": results}
        return httpx.Response(200, json=body)

    httpx_mock.add_callback(echo)

    result = cli("send", str(good_csv), env=CREDENTIALS)

    assert result.exit_code == EXIT_ROWS_FAILED
    assert sha256("ann@example.com") not in result.output
    assert f"line 2: rejected: Pinterest: {WITHHELD_MESSAGE}" in result.stderr


# --- what a message may quote ----------------------------------------------------


def test_a_file_without_a_header_row_says_so_without_quoting_it(cli, tmp_path):
    now = int(time.time())
    path = tmp_path / "x.csv"
    path.write_text(f"checkout,{now},ann@example.com\n", encoding="utf-8")

    result = cli("validate", str(path))

    assert result.exit_code == EXIT_ERROR
    assert "the first line is not a header" in result.stderr
    assert "ann@" not in result.output


def test_unknown_columns_are_named_by_position(cli, tmp_path):
    path = write_csv(
        tmp_path / "x.csv",
        "event_name,ann@example.com,event_time,+1 650 555 0100",
        "a,b,1,c",
    )

    result = cli("validate", str(path))

    assert "columns 2 and 4 of the header are not event fields" in result.stderr
    assert "ann@" not in result.output
    assert "555" not in result.output


def test_unknown_nested_keys_are_not_quoted(cli, tmp_path):
    now = int(time.time())
    document = {
        "event_name": "lead",
        "event_time": now,
        "user_data": {"em": "a@b.co", "ann@example.com": "x"},
    }
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(document) + "\n", encoding="utf-8")

    result = cli("validate", str(path))

    assert "line 1: invalid: user_data.<unknown key>: is not a field" in result.stderr
    assert "ann@" not in result.output


def test_an_unknown_json_key_is_named_by_position(cli, tmp_path):
    now = int(time.time())
    document = {"event_name": "lead", "event_time": now, "ann@example.com": 1}
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(document) + "\n", encoding="utf-8")

    result = cli("validate", str(path))

    assert "line 1: invalid: key 3 is an unknown key" in result.stderr
    assert "ann@" not in result.output


# --- --map ignores case ----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "item"),
    [("KIND,When,Mail", "kind=EVENT_NAME"), ("kind,when,mail", "Kind=event_name")],
)
def test_map_matches_their_columns_ignoring_case(cli, tmp_path, header, item):
    now = int(time.time())
    path = write_csv(tmp_path / "x.csv", header, f"lead,{now},a@b.co")

    result = cli(
        "validate",
        str(path),
        "--map",
        item,
        "--map",
        "WHEN=event_time",
        "--map",
        " mail =email",
    )

    assert result.exit_code == EXIT_OK


def test_map_matches_json_keys_ignoring_case(cli, tmp_path):
    now = int(time.time())
    document = {"Kind": "lead", "event_time": now, "E-Mail": "a@b.co"}
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(document) + "\n", encoding="utf-8")

    result = cli(
        "validate", str(path), "--map", "kind=event_name", "--map", "e-mail=email"
    )

    assert result.exit_code == EXIT_OK


@pytest.mark.parametrize(
    ("items", "named"),
    [
        (["Telephone=phone"], "--map 'Telephone=phone': the header has no such column"),
        (
            ["Fax=", "email=em", "Pager="],
            "--map 'Fax=', --map 'Pager=': the header has none of these columns",
        ),
    ],
)
def test_map_of_a_column_the_header_lacks_is_a_usage_error(cli, good_csv, items, named):
    result = cli("validate", str(good_csv), *(f"--map={item}" for item in items))

    assert result.exit_code == EXIT_ERROR
    assert result.stderr == f"pinterest-mw: error: {named}\n"


# --- outbox -------------------------------------------------------------------


def outbox_stats(path: Path) -> OutboxStats:
    outbox = SQLiteOutbox(path, readonly=True)
    try:
        return outbox.stats()
    finally:
        outbox.close()


def event(index: int) -> WireEvent:
    return build_event(
        "checkout", user_data={"email": f"buyer{index}@example.com"}
    ).to_wire_event()


@pytest.fixture
def outbox_file(tmp_path: Path) -> Path:
    """An outbox with 2 pending events and 3 rejected ones (two reasons)."""
    path = tmp_path / "outbox.sqlite3"
    outbox = SQLiteOutbox(path)
    try:
        outbox.put([event(i) for i in range(5)])
        claim = outbox.claim(3, lease=60)
        assert claim is not None
        keys = [item.key for item in claim.items]
        outbox.reject(
            claim,
            {keys[0]: "Invalid event_name", keys[1]: "Invalid event_name"}
            | {keys[2]: "HTTP 400"},
        )
    finally:
        outbox.close()
    return path


def test_outbox_counts_events_by_state_with_reasons(cli, outbox_file):
    result = cli("outbox", "--path", str(outbox_file))

    assert result.exit_code == EXIT_OK
    assert "pending:   2" in result.stdout
    assert "rejected:  3" in result.stdout
    assert "        2  Invalid event_name" in result.stdout


def test_outbox_json_is_one_document(cli, outbox_file):
    result = cli("outbox", "--path", str(outbox_file), "--json", "--rejected", "5")

    document = json.loads(result.stdout)
    assert document["rejected_reasons"] == {"Invalid event_name": 2, "HTTP 400": 1}
    assert len(document["latest_rejected"]) == 3


def test_outbox_shows_no_user_data(cli, outbox_file):
    result = cli("outbox", "--path", str(outbox_file), "--rejected", "5")

    assert "buyer" not in result.stdout
    assert sha256("buyer0@example.com") not in result.stdout


@pytest.mark.parametrize("option", ["--outbox", "--path"])
def test_outbox_takes_the_same_option_as_serve(cli, outbox_file, option):
    summary = cli("outbox", option, str(outbox_file))
    retried = cli("outbox", "retry", option, str(outbox_file))

    assert "rejected:  3" in summary.stdout
    assert retried.stdout == "re-queued 3 rejected events\n"


def test_outbox_path_comes_from_the_environment(cli, outbox_file):
    result = cli("outbox", env={"PINTEREST_OUTBOX": str(outbox_file)})

    assert "rejected:  3" in result.stdout


def test_outbox_retry_requeues_every_rejected_event(cli, outbox_file):
    result = cli("outbox", "retry", "--path", str(outbox_file))

    stats = outbox_stats(outbox_file)
    assert result.stdout == "re-queued 3 rejected events\n"
    assert (stats.pending, stats.rejected) == (5, 0)


def test_outbox_retry_can_pick_one_reason(cli, outbox_file):
    result = cli("outbox", "--path", str(outbox_file), "retry", "--reason", "HTTP 400")

    stats = outbox_stats(outbox_file)
    assert (stats.pending, stats.rejected) == (3, 2)
    assert result.stdout == "re-queued 1 rejected event with that reason\n"


def test_outbox_listing_leaves_the_file_as_it_was(cli, outbox_file):
    """Another process's outbox: no table created, no WAL switch, no chmod."""
    with contextlib.closing(sqlite3.connect(outbox_file)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
    outbox_file.chmod(0o644)
    before = outbox_file.read_bytes()

    result = cli("outbox", "--path", str(outbox_file), "--rejected", "5")

    with contextlib.closing(sqlite3.connect(outbox_file)) as conn:
        (journal,) = conn.execute("PRAGMA journal_mode").fetchone()
    assert result.exit_code == EXIT_OK
    assert outbox_file.read_bytes() == before
    assert (stat.S_IMODE(outbox_file.stat().st_mode), journal) == (0o644, "delete")


def test_outbox_listing_refuses_a_file_that_is_not_an_outbox(cli, tmp_path):
    path = tmp_path / "orders.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")

    result = cli("outbox", "--path", str(path))

    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master").fetchall()
    assert result.exit_code == EXIT_ERROR
    assert result.stderr.count("\n") == 1
    assert f"{path} cannot be used: it is not a pinterest_mw outbox" in result.stderr
    assert tables == [("orders",)]


@pytest.mark.parametrize("args", [["outbox"], ["outbox", "retry"]])
def test_outbox_commands_do_not_create_a_missing_outbox(cli, tmp_path, args):
    result = cli(*args)

    assert result.exit_code == EXIT_ERROR
    assert "no outbox at" in result.stderr
    assert not (tmp_path / "pinterest-mw-data").exists()


# --- errors -------------------------------------------------------------------


@pytest.fixture
def broken_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("value ann@example.com could not be read")

    monkeypatch.setattr("pinterest_mw.cli.parse_event", fail)


def test_an_unexpected_error_is_one_line_without_its_message(
    cli, good_csv, broken_parser
):
    result = cli("validate", str(good_csv))

    assert result.exit_code == EXIT_ERROR
    assert result.stderr == (
        "pinterest-mw: error: unexpected RuntimeError (run with --debug for details)\n"
    )


def test_debug_shows_the_traceback_of_an_unexpected_error(cli, good_csv, broken_parser):
    result = cli("--debug", "validate", str(good_csv))

    assert "Traceback" in result.stderr
    assert result.stderr.endswith("pinterest-mw: error: unexpected RuntimeError\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["send"], "Missing argument 'FILE'; see 'pinterest-mw send --help'\n"),
        (["--bogus"], "No such option: --bogus; see 'pinterest-mw --help'\n"),
        (["outbox", "retry", "--bogus"], "; see 'pinterest-mw outbox retry --help'"),
        (
            ["serve", "--port", "70000"],
            "--port': Input should be less than or equal to 65535",
        ),
        (
            ["send", "x.csv", "--dryrun"],
            "No such option: --dryrun (did you mean --dry-run?);"
            " see 'pinterest-mw send --help'\n",
        ),
        (
            ["servee"],
            "No such command 'servee' (did you mean 'serve'?);"
            " see 'pinterest-mw --help'\n",
        ),
        (["serve", "--port", "x"], "Invalid value for '--port': not a valid integer;"),
        (["hash", "email"], "Missing argument 'VALUE';"),
    ],
)
def test_a_usage_error_is_one_line_and_exits_2(cli, args, message):
    result = cli(*args)

    assert result.exit_code == EXIT_ERROR
    assert result.stderr.startswith("pinterest-mw: error: ")
    assert result.stderr.count("\n") == 1
    assert message in result.stderr


def test_no_command_prints_the_help_on_stderr_and_exits_2(cli):
    """A usage error like any other: a script that forgot its command fails."""
    result = cli()

    assert result.exit_code == EXIT_ERROR
    assert result.stdout == ""
    assert "Usage: pinterest-mw [OPTIONS] COMMAND" in result.stderr


def test_help_asked_for_goes_to_stdout_and_exits_0(cli):
    result = cli("--help")

    assert result.exit_code == EXIT_OK
    assert "Usage: pinterest-mw [OPTIONS] COMMAND" in result.stdout


def test_an_interrupted_command_exits_130_in_one_line(cli, good_csv, monkeypatch):
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("pinterest_mw.cli.parse_event", interrupt)

    result = cli("validate", str(good_csv))

    assert result.exit_code == EXIT_INTERRUPTED
    assert result.stderr == "pinterest-mw: error: interrupted\n"


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["validate", "DIR"], ""),
        (["validate", "--format", "csv", "DIR"], ""),
        (["send", "DIR"], ""),
        (["validate", "GOOD", "--report", "DIR"], " (the --report file)"),
        (["outbox", "--outbox", "DIR"], " (set --outbox or PINTEREST_OUTBOX)"),
        (["outbox", "retry", "--outbox", "DIR"], " (set --outbox or PINTEREST_OUTBOX)"),
        (
            ["serve", "--port", "0", "--outbox", "DIR"],
            " (set --outbox or PINTEREST_OUTBOX)",
        ),
    ],
    ids=["validate", "validate-csv", "send", "report", "outbox", "retry", "serve"],
)
def test_a_directory_given_for_a_file_is_one_wording_everywhere(
    cli, tmp_path, good_csv, args, hint
):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    args = [{"DIR": str(folder), "GOOD": str(good_csv)}.get(a, a) for a in args]

    result = cli(*args, env=CREDENTIALS)

    assert result.exit_code == EXIT_ERROR
    assert result.stderr == (
        f"pinterest-mw: error: '{folder}' is a directory, not a file{hint}\n"
    )


def test_serve_names_an_unusable_outbox_once(cli, tmp_path):
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    outbox = tmp_path / "a-file" / "outbox.sqlite3"

    result = cli("serve", "--port", "0", "--outbox", str(outbox))

    assert result.exit_code == EXIT_ERROR
    assert result.stderr.count(str(outbox)) == 1
    assert result.stderr.endswith(" (set --outbox or PINTEREST_OUTBOX)\n")


@pytest.mark.parametrize("command", ["serve", "fake-api"])
@pytest.mark.parametrize("host", ["", "  "])
def test_an_empty_host_is_refused(cli, command, host, serve_options):
    """An empty address would listen on every interface (no server runs here)."""
    result = cli(command, "--port", "0", "--host", host)

    assert result.exit_code == EXIT_ERROR
    assert result.stderr.startswith(
        "pinterest-mw: error: Invalid value for '--host': must not be empty"
    )
    assert result.stderr.count("\n") == 1


def help_text(cli: Any, *command: str) -> str:
    result = cli(*command, "--help")
    assert result.exit_code == EXIT_OK
    return " ".join(result.stdout.split())


def test_validate_help_gives_its_own_exit_statuses(cli):
    text = help_text(cli, "validate")

    assert "Exit status: 0 every row valid (warnings or not), 1 some rows invalid," in (
        text
    )
    assert "rejected" not in text


def test_serve_help_says_every_overflow_policy_counts_refusals_as_dropped(cli):
    text = help_text(cli, "serve")

    assert "every refused event is counted as dropped" in text
    assert "drop_newest counts them" not in text


def test_fake_api_on_a_port_in_use_is_one_line(cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = cli("fake-api", "--port", str(port))

    assert result.exit_code == EXIT_ERROR
    assert result.stderr == (
        f"pinterest-mw: error: cannot listen on 127.0.0.1 port {port}:"
        " address already in use\n"
    )


# --- serve, without a server --------------------------------------------------


def test_serve_on_a_port_in_use_is_one_line(cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = cli("serve", "--port", str(port))

    assert result.exit_code == EXIT_ERROR
    assert result.stderr == (
        f"pinterest-mw: error: cannot listen on 127.0.0.1 port {port}:"
        " address already in use\n"
    )


def test_serve_with_workers_on_a_port_in_use_is_one_line(cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = cli("serve", "--port", str(port), "--workers", "2")

    assert result.exit_code == EXIT_ERROR
    assert "address already in use" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("where", ["a-directory", "a-file/outbox.sqlite3"])
def test_serve_with_an_unusable_outbox_is_one_line(cli, tmp_path, where):
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "a-file").write_text("", encoding="utf-8")

    result = cli("serve", "--port", "0", "--outbox", where)

    assert result.exit_code == EXIT_ERROR
    assert result.stderr.startswith("pinterest-mw: error: ")
    assert result.stderr.count("\n") == 1
    assert where in result.stderr


@pytest.fixture
def serve_options(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What `serve` would run with, its server replaced by a recorder."""
    recorded: list[Any] = []
    monkeypatch.setattr(
        "pinterest_mw.cli._serve_one", lambda options, *args: recorded.append(options)
    )
    return recorded


def test_serve_passes_the_outbox_bounds_to_its_outbox(cli, tmp_path, serve_options):
    result = cli(
        *("serve", "--outbox", str(tmp_path / "o.sqlite3")),
        *("--max-queue-size", "50", "--max-queue-bytes", "4096"),
        *("--max-rejected", "7", "--rejected-retention", "60"),
        *("--overflow", "block", "--block-timeout", "0.5"),
    )
    [options] = serve_options
    client = _serve_client(options)
    _close_served(client)

    assert result.exit_code == EXIT_OK
    outbox = client.outbox
    assert isinstance(outbox, SQLiteOutbox)
    assert (outbox.max_events, outbox.max_bytes) == (50, 4096)
    assert (outbox.max_rejected, outbox.rejected_retention) == (7, 60)
    assert (options.overflow, options.block_timeout) == ("block", 0.5)


def test_serve_reads_the_outbox_bounds_from_the_environment(cli, serve_options):
    env = {
        "PINTEREST_MAX_QUEUE_SIZE": "5",
        "PINTEREST_MAX_QUEUE_BYTES": "9000",
        "PINTEREST_OVERFLOW": "RAISE",
        "PINTEREST_BLOCK_TIMEOUT": "2",
        "PINTEREST_MAX_REJECTED": "3",
        "PINTEREST_REJECTED_RETENTION": "30",
    }

    cli("serve", env=env)

    [options] = serve_options
    assert (options.max_queue_size, options.max_queue_bytes) == (5, 9000)
    assert (options.overflow, options.block_timeout) == ("raise", 2)
    assert (options.max_rejected, options.rejected_retention) == (3, 30)


def test_serve_outbox_bounds_default_to_the_outboxs_own(cli, serve_options):
    cli("serve")

    [options] = serve_options
    assert (options.max_queue_size, options.max_rejected) == (100_000, 100_000)
    assert options.rejected_retention == 7 * DAY


@pytest.mark.parametrize(
    "args", [["--max-queue-size", "0"], ["--overflow", "sometimes"]]
)
def test_serve_refuses_unusable_outbox_bounds(cli, args):
    result = cli("serve", *args)

    assert result.exit_code == EXIT_ERROR
    assert result.stderr.count("\n") == 1


@pytest.mark.e2e
@pytest.mark.parametrize(
    "content",
    [
        b"order_id,email\n1,ann@example.com\n" * 40,
        b"SQLite format 3\x00" + b"\x01" * 4000,
    ],
    ids=["not-sqlite", "damaged"],
)
def test_serve_with_an_outbox_file_that_is_no_outbox_is_one_line(tmp_path, content):
    """Refused at start-up, not with a 503 at the first request."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(content)

    result = run_cli("serve", "--port", "0", "--outbox", str(junk), cwd=tmp_path)

    assert result.returncode == EXIT_ERROR
    assert result.stderr.startswith("pinterest-mw: error: ")
    assert result.stderr.count("\n") == 1
    assert str(junk) in result.stderr
    assert "ann@example.com" not in result.stderr


def test_serve_refuses_a_bad_test_endpoint_variable(cli):
    result = cli("serve", "--port", "0", env={"PINTEREST_TEST_ENDPOINT": "sometimes"})

    assert result.exit_code == EXIT_ERROR
    assert result.stderr.startswith("pinterest-mw: error: PINTEREST_TEST_ENDPOINT")


def test_version_is_printed(cli):
    result = cli("--version")

    assert result.stdout.startswith("pinterest-mw ")


# --- real processes -----------------------------------------------------------


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pinterest_mw.cli", *args],
        capture_output=True,
        text=True,
        env=process_env(env),
        cwd=cwd,
        timeout=60,
        check=False,
    )


def process_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINTEREST_")}
    return {**env, **(extra or {})}


@dataclass
class Server:
    """A `pinterest-mw serve` process and what it logged."""

    process: subprocess.Popen[str]
    url: str = ""
    log: list[str] = field(default_factory=list)
    lines: queue.Queue[str] = field(default_factory=queue.Queue)

    def read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            self.lines.put(line)

    def wait_for_line(self, text: str) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            if text in line:
                return line
        raise AssertionError(f"no {text!r} in the log:\n{''.join(self.log)}")

    def stop(self, signal_number: int = signal.SIGTERM) -> int:
        """Signal the process to stop, then wait for it to flush and exit."""
        self.process.send_signal(signal_number)
        return self.process.wait(timeout=STARTUP_TIMEOUT)


@contextlib.contextmanager
def serving(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, port: int = 0
) -> Iterator[Server]:
    """Run `pinterest-mw serve` on 127.0.0.1; kill it at the end whatever happens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pinterest_mw.cli", "serve", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=process_env(env),
        cwd=tmp_path,
    )
    server = Server(process)
    reader = threading.Thread(target=server.read_log, daemon=True)
    reader.start()
    try:
        line = server.wait_for_line("serving on http://")
        server.url = line.split("serving on ")[1].split()[0]
        if port:
            server.url = f"http://127.0.0.1:{port}"
        wait_for_health(server)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=STARTUP_TIMEOUT)
        reader.join(timeout=5)
        if process.stderr is not None:
            process.stderr.close()


def wait_for_health(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError as exc:
            if time.monotonic() > deadline or server.process.poll() is not None:
                log = "".join(server.log)
                raise AssertionError(f"serve never answered:\n{log}") from exc
        time.sleep(0.05)


def post_event(
    server: Server,
    email: str,
    headers: dict[str, str] | None = None,
    user_data: dict[str, str] | None = None,
) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}/track-event",
        json={
            "event_name": "checkout",
            "user_data": {"email": email, **(user_data or {})},
        },
        headers=headers,
        timeout=10,
    )
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def fake_api() -> Iterator[tuple[FakePinterestAPI, str]]:
    fake = FakePinterestAPI()
    with serve_fake_api(fake) as url:
        yield fake, url


def sending_env(api_url: str) -> dict[str, str]:
    return {**CREDENTIALS, "PINTEREST_API_URL": api_url}


@pytest.mark.e2e
def test_serve_without_credentials_keeps_events_in_the_outbox(tmp_path):
    outbox = tmp_path / "kept.sqlite3"

    with serving(tmp_path, "--outbox", str(outbox)) as server:
        health = httpx.get(f"{server.url}/health").json()
        post_event(server, "ann@example.com")
        server.stop()

    assert health["sending"] is False
    assert outbox_stats(outbox).pending == 1


@pytest.mark.e2e
def test_serve_without_credentials_says_so_in_one_log_line(tmp_path):
    outbox = tmp_path / "kept.sqlite3"

    with serving(tmp_path, "--outbox", str(outbox)) as server:
        server.stop()

    expected = NOT_SENDING_LINE % outbox
    not_sending = [line for line in server.log if "not sent" in line]
    assert len(not_sending) == 1
    assert expected in not_sending[0]


@pytest.mark.e2e
def test_serve_sends_events_hashed_to_the_api(tmp_path, fake_api):
    fake, url = fake_api

    with serving(tmp_path, "--flush-interval", "0.05", env=sending_env(url)) as server:
        accepted = post_event(server, "Ann@Example.com")
        wait_until(lambda: fake.events, "the event at the fake API")

    assert [e["event_id"] for e in fake.events] == accepted["event_ids"]
    assert fake.events[0]["user_data"]["em"] == [sha256("ann@example.com")]


@pytest.mark.e2e
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_flushes_waiting_events_before_exit(
    tmp_path, fake_api, stop_signal
):
    """A flush interval of an hour: only the shutdown can have sent the event."""
    fake, url = fake_api

    with serving(tmp_path, "--flush-interval", "3600", env=sending_env(url)) as server:
        accepted = post_event(server, "ann@example.com")
        assert fake.events == []
        server.stop(stop_signal)

    assert [e["event_id"] for e in fake.events] == accepted["event_ids"]


@pytest.mark.e2e
def test_serve_delivers_events_an_earlier_run_kept_first(tmp_path, fake_api):
    fake, url = fake_api
    outbox = tmp_path / "shared.sqlite3"
    with serving(tmp_path, "--outbox", str(outbox)) as server:
        kept = post_event(server, "ann@example.com")
        server.stop()

    with serving(
        tmp_path,
        "--outbox",
        str(outbox),
        "--flush-interval",
        "0.05",
        env=sending_env(url),
    ):
        wait_until(lambda: fake.events, "the kept event at the fake API")

    assert [e["event_id"] for e in fake.events] == kept["event_ids"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.e2e
def test_serve_with_two_workers_without_credentials_says_so_once(tmp_path):
    outbox = tmp_path / "kept.sqlite3"
    port = free_port()

    with serving(tmp_path, "--outbox", str(outbox), "--workers", "2", port=port) as s:
        for index in range(4):
            post_event(s, f"buyer{index}@example.com")
        s.stop()

    assert outbox_stats(outbox).pending == 4
    assert len([line for line in s.log if "not sent" in line]) == 1


class PeerPorts:
    """Wraps an ASGI app: the client port of every POST it receives."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.ports: set[int] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["client"]:
            self.ports.add(scope["client"][1])
        await self.app(scope, receive, send)


def children_of(parent: int) -> list[int]:
    """The processes whose parent is `parent` (Linux /proc)."""
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(stat_file.parent.name))
    return children


def processes_connected_from(ports: set[int], parent: int) -> set[int]:
    """Which children of `parent` hold the TCP connections from `ports`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) in ports:
                inodes.add(f"socket:[{fields[9]}]")
    owners = set()
    for pid in children_of(parent):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if str(fd.readlink()) in inodes:
                        owners.add(pid)
    return owners


@pytest.mark.e2e
@pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="finds the sending processes in /proc"
)
def test_serve_with_two_workers_sends_each_event_once(tmp_path):
    """Both workers claim from the shared outbox while the other one sends.

    The fake holds each request a little, so that without working leases a
    worker would claim a batch the other is still sending.
    """
    fake = FakePinterestAPI(latency=0.1)
    peers = PeerPorts(fake.app)
    fake.app = peers  # type: ignore[assignment]
    args = ("--workers", "2", "--flush-interval", "0.05")

    with (
        serve_fake_api(fake) as url,
        serving(tmp_path, *args, env=sending_env(url), port=free_port()) as s,
    ):
        wait_until(
            lambda: "".join(s.log).count("Application startup complete") == 2,
            "both workers to start",
        )
        posted = []
        for index in range(40):
            posted += post_event(s, f"buyer{index}@example.com")["event_ids"]
            time.sleep(0.02)
        wait_until(lambda: len(fake.events) >= 40, "40 events at the fake API")
        senders = processes_connected_from(peers.ports, s.process.pid)
        s.stop()

    received = collections.Counter(event["event_id"] for event in fake.events)
    assert sorted(received) == sorted(posted)
    assert set(received.values()) == {1}
    assert len(senders) == 2


@pytest.mark.e2e
def test_serve_refuses_events_past_its_max_queue_size(tmp_path):
    """Not sending, events stay in the outbox: the third finds it full."""
    outbox = tmp_path / "kept.sqlite3"
    body = {"event_name": "checkout", "user_data": {"email": "ann@example.com"}}

    with serving(tmp_path, "--outbox", str(outbox), "--max-queue-size", "2") as s:
        statuses = [
            httpx.post(f"{s.url}/track-event", json=body, timeout=10).status_code
            for _ in range(3)
        ]

    assert statuses == [202, 202, 503]
    assert outbox_stats(outbox).pending == 2


@pytest.mark.e2e
@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    ("stop_signal", "status"),
    [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, EXIT_OK)],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_stop_signal_ends_serve_with_its_documented_status(
    tmp_path, workers, stop_signal, status
):
    """0 after SIGTERM, 130 after SIGINT, one process or several."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with serving(tmp_path, "--workers", workers, port=port) as server:
        returned = server.stop(stop_signal)

    assert returned == status
    assert any("pinterest-mw stopped" in line for line in server.log)
    assert not any("Traceback" in line for line in server.log)


@pytest.mark.e2e
def test_serve_reads_the_phone_region_from_the_environment(tmp_path, fake_api):
    fake, url = fake_api
    env = {**sending_env(url), "PINTEREST_DEFAULT_REGION": "US"}

    with serving(tmp_path, "--flush-interval", "0.05", env=env) as server:
        post_event(server, "ann@example.com", user_data={"phone": "(650) 555-1212"})
        wait_until(lambda: fake.events, "the event at the fake API")

    assert fake.events[0]["user_data"]["ph"] == [sha256("16505551212")]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "client_ip"),
    [((), "127.0.0.1"), (("--trusted-proxy", "127.0.0.1"), "203.0.113.9")],
)
def test_serve_believes_forwarded_for_only_from_a_trusted_proxy(
    tmp_path, fake_api, args, client_ip
):
    """uvicorn's own proxy handling would believe any peer on 127.0.0.1."""
    fake, url = fake_api
    headers = {"X-Forwarded-For": "203.0.113.9"}

    with serving(
        tmp_path, "--flush-interval", "0.05", *args, env=sending_env(url)
    ) as s:
        post_event(s, "ann@example.com", headers=headers)
        wait_until(lambda: fake.events, "the event at the fake API")

    assert fake.events[0]["user_data"]["client_ip_address"] == client_ip


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "env", "status"),
    [
        ((), {}, 404),
        (("--test-endpoint",), {}, 200),
        ((), {"PINTEREST_TEST_ENDPOINT": "1"}, 200),
        (("--no-test-endpoint",), {"PINTEREST_TEST_ENDPOINT": "1"}, 404),
    ],
)
def test_the_test_endpoint_is_served_only_when_asked(tmp_path, args, env, status):
    body = {"event_name": "checkout", "user_data": {"email": "ann@example.com"}}

    with serving(tmp_path, *args, env=env) as server:
        response = httpx.post(f"{server.url}/track-event-test", json=body, timeout=10)

    assert response.status_code == status
    serving_line = next(line for line in server.log if "serving on" in line)
    assert ("/track-event-test" in serving_line) is (status == 200)


@pytest.mark.e2e
def test_send_as_a_process_logs_each_warning_once_on_one_line(
    tmp_path, good_csv, fake_api
):
    """A retried request: the transport's warning, without a doubled prefix."""
    fake, url = fake_api
    fake.fail_next(1, status=503, retry_after=0)

    result = run_cli("send", str(good_csv), env=sending_env(url), cwd=tmp_path)

    assert result.returncode == EXIT_OK
    assert re.fullmatch(
        r"pinterest-mw: warning: request of \d+ event(?:s|\(s\))? failed \(status 503\)"
        r" on attempt 1 of \d+; retrying in [\d.]+ s\n",
        result.stderr,
    )


def read_terminal(master: int, process: subprocess.Popen[str]) -> str:
    """What a process wrote to the pseudo-terminal `master`, until it exits."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        try:
            data = os.read(master, 4096) if ready else b""
        except OSError:  # EIO: the process closed its side
            break
        chunks.append(data)
        if not data and process.poll() is not None:
            break
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.e2e
def test_on_a_terminal_a_warning_shows_its_level_once(tmp_path, good_csv, fake_api):
    """rich's level column, and the message alone: no `WARNING:logger:` prefix."""
    fake, url = fake_api
    fake.fail_next(1, status=503, retry_after=0)
    master, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "pinterest_mw.cli", "send", str(good_csv)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env=process_env({**sending_env(url), "TERM": "dumb", "COLUMNS": "200"}),
            cwd=tmp_path,
        )
        os.close(terminal)
        output = read_terminal(master, process)
    finally:
        os.close(master)

    words = " ".join(output.split())  # rich wraps at the terminal's width
    assert process.wait(timeout=STARTUP_TIMEOUT) == EXIT_OK
    assert words.count("WARNING") == 1
    assert "retrying in" in words
    assert "pinterest_mw.transport" not in words


@pytest.mark.e2e
def test_send_as_a_process_reports_and_exits_1(tmp_path, mixed_csv, fake_api):
    fake, url = fake_api

    result = run_cli("send", str(mixed_csv), env=sending_env(url), cwd=tmp_path)

    assert result.returncode == EXIT_ROWS_FAILED
    assert "line 4: invalid: custom_data.value" in result.stderr
    assert "2 processed" in result.stdout
    assert len(fake.events) == 2


@pytest.mark.e2e
def test_hash_as_a_process_prints_the_digest(tmp_path):
    result = run_cli("hash", "email", "Ann@Example.com", cwd=tmp_path)

    assert result.returncode == EXIT_OK
    assert f"sha256: {sha256('ann@example.com')}" in result.stdout


@pytest.mark.e2e
def test_an_error_in_a_process_is_one_line_without_a_traceback(tmp_path):
    result = run_cli("validate", "missing.csv", cwd=tmp_path)

    assert result.returncode == EXIT_ERROR
    assert result.stderr == (
        "pinterest-mw: error: No such file or directory: missing.csv\n"
    )


@contextlib.contextmanager
def held_fake_api(hold: int) -> Iterator[tuple[str, queue.Queue[int], threading.Event]]:
    """A served fake that holds its request number `hold` until released.

    Yields the URL, a queue told when that request arrives, and the event
    that releases it (set at the end in any case).
    """
    fake = FakePinterestAPI()
    app = fake.app
    arrived: queue.Queue[int] = queue.Queue()
    release = threading.Event()
    seen: list[int] = []

    async def holding(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(1)
            if len(seen) == hold:
                arrived.put(hold)
                await anyio.to_thread.run_sync(release.wait, STARTUP_TIMEOUT)
        await app(scope, receive, send)

    fake.app = holding  # type: ignore[assignment]
    try:
        with serve_fake_api(fake) as url:
            yield url, arrived, release
    finally:
        release.set()


@pytest.mark.e2e
def test_a_terminated_send_says_what_was_sent_and_exits_143(tmp_path):
    """SIGTERM during the second request, as a service manager would send it."""
    path = rows_then(tmp_path, 1001, b"")
    with held_fake_api(hold=2) as (url, arrived, _):
        process = subprocess.Popen(
            [sys.executable, "-m", "pinterest_mw.cli", "send", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=process_env(sending_env(url)),
            cwd=tmp_path,
        )
        try:
            arrived.get(timeout=STARTUP_TIMEOUT)
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=STARTUP_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()

    assert process.returncode == EXIT_TERMINATED
    assert stdout.startswith("1001 rows: 1001 valid, 0 invalid; 1000 processed")
    assert stderr.splitlines()[-1] == (
        "pinterest-mw: error: terminated at line 1002; 1000 rows were sent, the"
        " last from line 1001: re-run with --start-line 1002 to skip them; the"
        " 1 row of the request under way may have reached Pinterest (a re-run"
        " sends them with the same event ids)"
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("stop_signal", "status"),
    [(signal.SIGTERM, EXIT_OK), (signal.SIGINT, EXIT_INTERRUPTED)],
)
def test_fake_api_prints_the_variables_that_send_to_it(
    tmp_path, good_csv, stop_signal, status
):
    process = subprocess.Popen(
        [sys.executable, "-m", "pinterest_mw.cli", "fake-api", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=process_env(),
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        exports = dict(
            line.removeprefix("export ").strip().split("=", 1) for line in lines
        )
        sent = run_cli("send", str(good_csv), "--test", env=exports, cwd=tmp_path)
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=STARTUP_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert exports["PINTEREST_ACCESS_TOKEN"] == FAKE_ACCESS_TOKEN
    assert exports["PINTEREST_AD_ACCOUNT_ID"] == FAKE_AD_ACCOUNT_ID
    assert exports["PINTEREST_API_URL"].startswith("http://127.0.0.1:")
    assert sent.returncode == EXIT_OK, sent.stderr
    assert process.returncode == status
    assert stderr.endswith(
        "fake Pinterest API stopped: 1 request, 0 events processed, and 2 more"
        " in test mode (validated, not processed)\n"
    )


@pytest.mark.e2e
def test_without_the_cli_extra_one_line_names_it(tmp_path):
    """typer made unimportable, as when `pinterest-mw[cli]` is not installed."""
    script = (
        "import runpy, sys; sys.modules['typer'] = None;"
        " runpy.run_module('pinterest_mw.cli', run_name='__main__')"
    )

    result = subprocess.run(
        [sys.executable, "-c", script, "hash", "email", "a@b.co"],
        capture_output=True,
        text=True,
        env=process_env(),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )

    assert result.returncode == EXIT_ERROR
    assert result.stderr == (
        "pinterest-mw: error: the pinterest-mw command line needs its extra:"
        " pip install 'pinterest-mw[cli]'\n"
    )
