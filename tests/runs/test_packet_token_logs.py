"""A presigned packet token is a bearer credential (whoever holds it reads or writes the packet), so no log
line may print it (docs/operations.md#logs): gunicorn's access log prints each request line, Django's
``django.request`` warns "Not Found: <path>" for a refused token. Both go through a real gunicorn started
with the Procfile's config (``mollifier_project/gunicorn.conf.py``) and the project's own log formatters."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from runs.tenants import ensure_tenant, issue_api_key
from tests.live import Gunicorn

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MASK = "/api/v1/packet-objects/<token>"


@pytest.fixture
def logs(tmp_path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def server(transactional_db, tmp_path, logs) -> Iterator[Gunicorn]:
    logs.mkdir()
    with (logs / "stderr.log").open("wb") as stderr:
        live = Gunicorn(
            {"PACKETS_ROOT": str(tmp_path / "packets")},
            args=["--access-logfile", str(logs / "access.log")],
            stderr=stderr,
        )  # fmt: skip
        yield live
        live.stop()


def call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}") if "json" in response.headers.get(
                "Content-Type", ""
            ) else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_no_log_line_of_gunicorn_or_django_prints_a_packet_token(server, logs):
    secret = issue_api_key(ensure_tenant("logs", "prod").env)[1]
    auth = {"Authorization": f"Bearer {secret}"}
    put_url = call("PUT", f"{server.url}/api/v2/packets/l/p.json", headers=auth)[1]["presignedUrl"]
    assert call("PUT", put_url, b"{}", {"Content-Type": "application/json"})[0] == 200
    get_url = call("GET", f"{server.url}/api/v1/packets/l/p.json", headers=auth)[1]["presignedUrl"]
    assert call("GET", get_url)[0] == 200
    assert call("GET", get_url + "forged")[0] == 404  # django.request warns "Not Found: <path>"
    assert call("PUT", put_url, b"[]")[0] == 409  # and "Conflict: <path>"
    tokens = [url.rsplit("/", 1)[1] for url in (put_url, get_url)]
    server.stop()

    access = (logs / "access.log").read_text()
    stderr = (logs / "stderr.log").read_text()
    print(f"\naccess log:\n{access}\nstderr:\n{stderr}")
    for token in tokens:
        assert token not in access
        assert token not in stderr
        assert token[:20] not in access + stderr  # not even a prefix of it
    assert access.count(f"PUT {MASK} HTTP/1.1") == 2 and access.count(f"GET {MASK} HTTP/1.1") == 2
    assert f'GET {MASK} HTTP/1.1" 404' in access  # the forged one: masked too
    assert f"Not Found: {MASK}" in stderr and f"Conflict: {MASK}" in stderr
    assert "/api/v2/packets/l/p.json" in access  # the rest of the request line is kept


def test_the_project_formatters_mask_a_token_in_message_extras_and_traceback():
    from mollifier_project.logs import JsonFormatter, PlainFormatter

    token = "eyJvIjoiZ2V0In0:1uQ:abcdefghijk"
    path = f"/api/v1/packet-objects/{token}"
    try:
        raise RuntimeError(f"boom at {path}")
    except RuntimeError:
        import sys

        record = logging.LogRecord("django.request", logging.WARNING, __file__, 1, "Not Found: %s", (path,),
                                   sys.exc_info())  # fmt: skip
    record.request = f"<WSGIRequest: GET '{path}?x=1'>"

    for formatter in (JsonFormatter(), PlainFormatter("%(levelname)s %(name)s %(message)s")):
        line = formatter.format(record)
        assert token not in line, line
        assert f"Not Found: {MASK}" in line
