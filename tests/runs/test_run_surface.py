"""Packets, reschedule, replay and metadata through the HTTP API: the edge cases the SDK tests do not reach
(bad input naming the field, limits, forged or expired URLs, a leased run, a compare-and-set conflict, and the
drain writing a buffered run's overrides into its row). docs/api.md#packets, #reschedule, #replay, #metadata."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.core import signing
from django.core.files.base import ContentFile
from django.db import connection

from buffer.buffer import Buffer
from drainer import drain
from drainer.limits import DrainLimits
from mollifier_project.clock import now_ms
from runs import engine, mutations, packets
from runs.auth import EnvContext
from runs.models import RunStatus, TaskRun
from runs.schemas import MetadataOperation
from runs.snapshot import from_snapshot
from runs.tenants import ensure_tenant, issue_api_key
from tests.factories import trigger_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def packet_dir(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "packets": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path), "allow_overwrite": False},
        },
    }
    return tmp_path


@pytest.fixture
def api(client, key_prefix, mollifier_settings, packet_dir):
    """Two envs: "buffered" (enrolled, every trigger buffered) and "direct" (straight to Postgres)."""
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, SHARDS=1, MUTATE_WAIT_MS=100)
    tenants = {
        "buffered": ensure_tenant("surface-enrolled", "dev", enrol=True),
        "direct": ensure_tenant("surface", "prod"),
    }
    secrets = {name: issue_api_key(t.env)[1] for name, t in tenants.items()}

    class Api:
        envs = {name: t.env for name, t in tenants.items()}

        def call(self, method, path, body=None, *, who="direct", content_type="application/json", raw=None, **meta):
            data = raw if raw is not None else ("" if body is None else json.dumps(body))
            auth = {"HTTP_AUTHORIZATION": f"Bearer {secrets[who]}"} if who else {}
            return getattr(client, method)(path, data=data, content_type=content_type, **auth, **meta)

        def trigger(self, who, **options):
            response = self.call("post", "/api/v1/tasks/hello/trigger", {"payload": '{"json":{"a":1}}',
                                 "options": {"payloadType": "application/super+json", **options}}, who=who)  # fmt: skip
            assert response.status_code == 200, response.content
            return response.json()["id"]

    return Api()


def assert_error(response, status, *fragments):
    assert response.status_code == status, response.content
    body = response.json()
    for fragment in fragments:
        assert fragment in body["error"], body
    return body


def object_path(url: str) -> str:
    return url[url.index("/api/") :]


# -------------------------------------------------------------------------------------------- packets


def test_an_uploaded_packet_downloads_with_its_bytes_and_content_type(api):
    presign = api.call("put", "/api/v2/packets/trigger/packet_1/payload.json").json()
    assert presign["storagePath"] == "trigger/packet_1/payload.json"
    body = '{"json":{"big":"' + "é" * 1000 + '"}}'
    put = api.call("put", object_path(presign["presignedUrl"]), raw=body.encode(), content_type="application/super+json",
                   who=None)  # fmt: skip
    assert put.status_code == 200, put.content
    url = api.call("get", "/api/v1/packets/trigger/packet_1/payload.json").json()["presignedUrl"]
    got = api.call("get", object_path(url), who=None)
    assert got.status_code == 200
    assert b"".join(got.streaming_content).decode() == body
    assert got["Content-Type"] == "application/super+json"


@pytest.mark.parametrize(
    ("uploaded", "served"),
    [("text/html", "application/octet-stream"), ("image/svg+xml", "application/octet-stream"),
     ("application/xhtml+xml", "application/octet-stream"), ("text/plain", "text/plain"),
     ("application/json", "application/json"), (None, "application/octet-stream")],
)  # fmt: skip
def test_a_packet_downloads_as_an_inert_attachment_whatever_type_it_was_uploaded_with(api, uploaded, served):
    path = "evil/page.html"
    url = object_path(api.call("put", f"/api/v2/packets/{path}").json()["presignedUrl"])
    page = b"<html><script>alert(document.cookie)</script></html>"
    headers = {"content_type": uploaded} if uploaded else {"content_type": ""}
    assert api.call("put", url, raw=page, who=None, **headers).status_code == 200
    got = api.call("get", object_path(api.call("get", f"/api/v1/packets/{path}").json()["presignedUrl"]), who=None)

    assert got.status_code == 200
    assert b"".join(got.streaming_content) == page  # the bytes are the tenant's, unchanged
    assert got["Content-Type"] == served
    assert got["Content-Disposition"] == 'attachment; filename="page.html"'
    assert got["X-Content-Type-Options"] == "nosniff"
    assert got["Content-Security-Policy"] == "sandbox; default-src 'none'"
    assert got["Cross-Origin-Resource-Policy"] == "same-origin"


def test_a_packet_over_the_limit_is_413_and_nothing_is_stored(api, mollifier_settings):
    mollifier_settings(MAX_PACKET_BYTES=1000)
    url = api.call("put", "/api/v2/packets/p/x.json").json()["presignedUrl"]
    assert_error(api.call("put", object_path(url), raw=b"x" * 1001, who=None), 413, "1000 bytes")
    assert_error(api.call("get", "/api/v1/packets/p/x.json"), 404, "Packet not found")


def test_a_streamed_body_is_cut_off_at_the_limit(api):
    grant = packets.Grant("put", api.envs["direct"].id, "s/y.txt")
    with pytest.raises(packets.TooLarge):
        packets.store(grant, io.BytesIO(b"y" * 5000), content_type="text/plain", limit=4096)
    assert not packets.exists(grant.env_id, grant.path)
    assert packets.store(grant, io.BytesIO(b"y" * 4096), content_type="text/plain", limit=4096) == 4096


def test_a_presigned_url_is_bound_to_its_method_and_cannot_be_forged(api):
    api.call("put", object_path(api.call("put", "/api/v2/packets/q.json").json()["presignedUrl"]), raw=b"{}",
             who=None)  # fmt: skip
    get_url = object_path(api.call("get", "/api/v1/packets/q.json").json()["presignedUrl"])
    put_url = object_path(api.call("put", "/api/v2/packets/q.json").json()["presignedUrl"])
    assert_error(api.call("put", get_url, raw=b"overwritten", who=None), 404, "not valid for this method")
    assert_error(api.call("get", put_url, who=None), 404, "not valid for this method")
    assert_error(api.call("get", get_url[:-3] + "abc", who=None), 404, "not valid")
    forged = signing.dumps({"o": "get", "e": api.envs["direct"].id, "p": "q.json"}, salt="another-salt")
    assert_error(api.call("get", packets.OBJECT_ROUTE + forged, who=None), 404, "not valid")


def test_a_packet_url_signed_with_the_repositorys_old_fallback_key_is_refused(api):
    """Before issue 16 a deployment without DJANGO_SECRET_KEY signed with this public key, so anyone could mint
    a URL for any env's packet; now no process starts with it (DEBUG off), and such a URL is refused."""
    api.call("put", object_path(api.call("put", "/api/v2/packets/victim.json").json()["presignedUrl"]),
             raw=b'{"secret":1}', who=None)  # fmt: skip
    env_id = api.envs["direct"].id
    for op in ("get", "put"):
        minted = signing.dumps({"o": op, "e": env_id, "p": "victim.json"}, key="dev-insecure-mollifier-secret-key-change-me",
                               salt="mollifier.packets")  # fmt: skip
        response = api.call(op, packets.OBJECT_ROUTE + minted, raw=b"{}" if op == "put" else None, who=None)
        response.close()
        assert response.status_code == 404, f"a {op} URL minted with the public key answered {response.status_code}"
        assert_error(response, 404, "not valid")


def test_a_presigned_url_expires(api, mollifier_settings, monkeypatch):
    mollifier_settings(PACKET_URL_TTL_S=60, PACKET_PUT_URL_TTL_S=30)
    url = object_path(api.call("put", "/api/v2/packets/e.json").json()["presignedUrl"])
    api.call("put", object_path(api.call("put", "/api/v2/packets/f.json").json()["presignedUrl"]), raw=b"{}", who=None)
    get_url = object_path(api.call("get", "/api/v1/packets/f.json").json()["presignedUrl"])
    later = time.time() + 61
    monkeypatch.setattr(signing.time, "time", lambda: later)
    assert_error(api.call("put", url, raw=b"{}", who=None), 404, "expired")
    assert_error(api.call("get", get_url, who=None), 404, "expired")


def test_with_a_packet_origin_packet_urls_point_there_and_the_app_host_serves_no_packet(api, mollifier_settings,
                                                                                       settings):  # fmt: skip
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "packets.testserver"]
    mollifier_settings(PACKET_ORIGIN="http://packets.testserver")
    put = api.call("put", "/api/v2/packets/o/p.json").json()["presignedUrl"]
    assert put.startswith("http://packets.testserver/api/v1/packet-objects/")
    on_packet_host = {"HTTP_HOST": "packets.testserver"}

    # The app's own host neither takes nor serves packets any more: its cookies never go with one.
    assert_error(api.call("put", object_path(put), raw=b"{}", who=None), 404, "packets.testserver")
    assert api.call("put", object_path(put), raw=b"{}", who=None, **on_packet_host).status_code == 200
    get = api.call("get", "/api/v1/packets/o/p.json").json()["presignedUrl"]
    assert get.startswith("http://packets.testserver/api/v1/packet-objects/")
    assert_error(api.call("get", object_path(get), who=None), 404, "packets.testserver")
    got = api.call("get", object_path(get), who=None, **on_packet_host)
    assert b"".join(got.streaming_content) == b"{}"
    assert got["Content-Disposition"].startswith("attachment")  # still inert there too
    # A run's document and its packet URL point there as well.
    run_id = api.call("post", "/api/v1/tasks/hello/trigger", {"payload": "o/p.json",
                      "options": {"payloadType": "application/store"}}).json()["id"]  # fmt: skip
    doc = api.call("get", f"/api/v3/runs/{run_id}").json()
    assert doc["payloadPresignedUrl"].startswith("http://packets.testserver/api/v1/packet-objects/")
    url = api.call("get", f"/api/v1/runs/{run_id}/packets/payload").json()["presignedUrl"]
    assert url.startswith("http://packets.testserver/api/v1/packet-objects/")


def test_an_upload_url_lives_packet_put_url_ttl_s_a_download_url_longer(api, monkeypatch):
    put_url = object_path(api.call("put", "/api/v2/packets/t.json").json()["presignedUrl"])
    early_put = object_path(api.call("put", "/api/v2/packets/t2.json").json()["presignedUrl"])
    assert api.call("put", early_put, raw=b"{}", who=None).status_code == 200
    get_url = object_path(api.call("get", "/api/v1/packets/t2.json").json()["presignedUrl"])
    now = time.time()
    monkeypatch.setattr(signing.time, "time", lambda: now + 590)
    assert api.call("put", object_path(api.call("put", "/api/v2/packets/t3.json").json()["presignedUrl"]), raw=b"{}",
                    who=None).status_code == 200  # fmt: skip
    monkeypatch.setattr(signing.time, "time", lambda: now + 601)  # past the upload TTL (600 s by default)

    assert_error(api.call("put", put_url, raw=b"{}", who=None), 404, "expired")
    got = api.call("get", get_url, who=None)
    got.close()  # the streamed file
    assert got.status_code == 200  # a download URL still lives (3600 s)


def test_a_packet_is_written_once_a_retried_put_of_the_same_bytes_is_harmless(api):
    presign = api.call("put", "/api/v2/packets/trigger/packet_w/payload.json").json()
    put_url = object_path(presign["presignedUrl"])
    original = b'{"json":{"amount":10}}'
    assert api.call("put", put_url, raw=original, who=None, content_type="application/super+json").status_code == 200
    run_id = api.call("post", "/api/v1/tasks/hello/trigger", {"payload": presign["storagePath"],
                      "options": {"payloadType": "application/store"}}).json()["id"]  # fmt: skip

    # The SDK's retry of a PUT whose answer was lost: the same bytes, the same URL → 200, nothing changes.
    retried = api.call("put", put_url, raw=original, who=None, content_type="application/super+json")
    assert (retried.status_code, retried.json()) == (200, {"size": len(original)})
    # Other bytes, through the same URL or a fresh one for the same path: refused, and the SDK is told not to retry.
    again = object_path(api.call("put", "/api/v2/packets/trigger/packet_w/payload.json").json()["presignedUrl"])
    for url, body in [(put_url, b'{"json":{"amount":99999}}'), (again, b"x"), (put_url, original + b" ")]:
        refused = assert_error(api.call("put", url, raw=body, who=None), 409, "already stored", "new path")
        assert refused is not None
        assert api.call("put", url, raw=body, who=None)["x-should-retry"] == "false"

    get_url = object_path(api.call("get", f"/api/v1/runs/{run_id}/packets/payload").json()["presignedUrl"])
    got = api.call("get", get_url, who=None)
    assert b"".join(got.streaming_content) == original  # the run's payload is what it was triggered with
    assert got["Content-Type"] == "application/super+json"


def test_a_refused_overwrite_of_a_packet_leaves_no_file_behind(api, packet_dir):
    grant = packets.Grant("put", api.envs["direct"].id, "w/once.json")
    assert packets.store(grant, io.BytesIO(b"first"), content_type="application/json", limit=4096) == 5
    before = sorted(p.relative_to(packet_dir) for p in packet_dir.rglob("*") if p.is_file())
    with pytest.raises(packets.AlreadyStored):
        packets.store(grant, io.BytesIO(b"second"), content_type="text/html", limit=4096)
    assert sorted(p.relative_to(packet_dir) for p in packet_dir.rglob("*") if p.is_file()) == before
    opened = packets.open_packet(packets.Grant("get", grant.env_id, grant.path))
    assert opened is not None
    body, kind = opened
    with body:
        assert (body.read(), kind) == (b"first", "application/json")


def test_a_retry_completes_an_upload_that_stopped_between_its_bytes_and_its_type(api):
    grant = packets.Grant("put", api.envs["direct"].id, "half/p.json")
    packets.storage().save(f"{grant.env_id}/data/{grant.path}", ContentFile(b'{"a":1}'))  # the type never written

    assert packets.store(grant, io.BytesIO(b'{"a":1}'), content_type="application/json", limit=4096) == 7

    opened = packets.open_packet(packets.Grant("get", grant.env_id, grant.path))
    assert opened is not None
    with opened[0] as f:
        assert (f.read(), opened[1]) == (b'{"a":1}', "application/json")


def test_of_two_first_uploads_racing_for_one_path_exactly_one_lands(api):
    """Both bodies are read in full before either is saved (a barrier at their end), so both find the path
    free; the exclusive create lets one land and the other is compared and refused."""
    barrier = threading.Barrier(2, timeout=10)

    class Body(io.BytesIO):
        def read(self, size=-1):
            chunk = super().read(size)
            if not chunk:
                barrier.wait()
            return chunk

    grant = packets.Grant("put", api.envs["direct"].id, "race/p.json")
    outcomes: dict[bytes, object] = {}

    def upload(data: bytes) -> None:
        try:
            outcomes[data] = packets.store(grant, Body(data), content_type="application/json", limit=4096)
        except packets.AlreadyStored as exc:
            outcomes[data] = exc

    threads = [threading.Thread(target=upload, args=(data,)) for data in (b'{"a":1}', b'{"b":22}')]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)

    landed = [data for data, outcome in outcomes.items() if isinstance(outcome, int)]
    assert len(outcomes) == 2 and len(landed) == 1, outcomes
    opened = packets.open_packet(packets.Grant("get", grant.env_id, grant.path))
    assert opened is not None
    with opened[0] as f:
        assert f.read() == landed[0]


@pytest.mark.parametrize("filename", ["a//b.json", "a/%2E%2E/b.json", "x" * 600, "a/b c.json"])
def test_a_filename_no_packet_can_have_is_400_naming_it(api, filename):
    assert_error(api.call("put", f"/api/v2/packets/{filename}"), 400, "filename")


def test_a_stored_payload_that_is_not_a_packet_path_is_400(api):
    response = api.call("post", "/api/v1/tasks/hello/trigger",
                        {"payload": "../../etc/passwd", "options": {"payloadType": "application/store"}})  # fmt: skip
    assert_error(response, 400, "payload", "stored packet path")
    assert not TaskRun.objects.exists()


def test_another_envs_key_cannot_read_or_find_a_packet(api):
    url = api.call("put", "/api/v2/packets/secret.json", who="buffered").json()["presignedUrl"]
    api.call("put", object_path(url), raw=b'{"s":1}', who=None)
    assert api.call("get", "/api/v1/packets/secret.json", who="buffered").status_code == 200
    assert_error(api.call("get", "/api/v1/packets/secret.json", who="direct"), 404, "Packet not found")
    run_id = api.trigger("buffered")
    assert_error(api.call("get", f"/api/v1/runs/{run_id}/packets/payload", who="direct"), 404, "Run not found")
    assert_error(api.call("get", f"/api/v1/runs/{run_id}/packets/payload", who="buffered"), 404, "no stored payload")


def test_a_retrieve_of_a_stored_payload_answers_an_absolute_presigned_url(api):
    for who in ("direct", "buffered"):
        response = api.call("post", "/api/v1/tasks/hello/trigger",
                            {"payload": "t/p.json", "options": {"payloadType": "application/store"}}, who=who)  # fmt: skip
        doc = api.call("get", f"/api/v3/runs/{response.json()['id']}", who=who).json()
        assert doc["payloadPresignedUrl"].startswith("http://testserver/api/v1/packet-objects/")
        assert "payload" not in doc


# ----------------------------------------------------------------------------------------- reschedule


@pytest.mark.parametrize("who", ["direct", "buffered"])
def test_reschedule_of_a_run_that_is_not_delayed_is_422(api, who):
    run_id = api.trigger(who)
    response = api.call("post", f"/api/v1/runs/{run_id}/reschedule", {"delay": "1h"}, who=who)
    assert_error(response, 422, "Cannot reschedule a run that is not delayed")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "delay"),
        ({"delay": 5}, "delay"),
        ({"delay": "soon"}, "delay"),
        ({"delay": "2001-01-01T00:00:00Z"}, "delay"),
    ],
)
def test_a_bad_reschedule_body_is_400_naming_the_field(api, body, fragment):
    run_id = api.trigger("direct", delay="1h")
    assert_error(api.call("post", f"/api/v1/runs/{run_id}/reschedule", body), 400, fragment)
    assert TaskRun.objects.get(id=run_id).status == RunStatus.DELAYED


def test_an_iso_date_reschedules_too(api):
    run_id = api.trigger("buffered", delay="1h")
    when = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    doc = api.call("post", f"/api/v1/runs/{run_id}/reschedule", {"delay": when.isoformat()}, who="buffered").json()
    assert datetime.fromisoformat(doc["delayedUntil"].replace("Z", "+00:00")) == when


def context(env) -> EnvContext:
    return EnvContext(env.id, env.org_id, env.slug, env.type, env.org.slug, True)


def lease_all(env) -> list:
    buffer = Buffer.from_settings()
    return buffer.lease(0, org_id=env.org_id, env_id=env.id, n=10, now_ms=now_ms(), lease_ms=30_000)


def test_a_leased_run_that_never_becomes_a_row_answers_503(api):
    run_id = api.trigger("buffered", delay="1h")
    lease_all(api.envs["buffered"])
    for path, body in ((f"/api/v1/runs/{run_id}/reschedule", {"delay": "2h"}),
                       (f"/api/v1/runs/{run_id}/metadata", {"metadata": {"a": 1}})):  # fmt: skip
        response = api.call("post" if "reschedule" in path else "put", path, body, who="buffered")
        assert_error(response, 503, "being created")
        assert response["x-should-retry"] == "true"


@pytest.mark.django_db(transaction=True)
def test_a_leased_run_waits_for_its_row_and_then_changes_the_row(api, mollifier_settings):
    mollifier_settings(MUTATE_WAIT_MS=5_000)
    env = api.envs["buffered"]
    run_id = api.trigger("buffered", delay="1h", metadata={"m": 0})
    (entry,) = lease_all(env)

    def materialise_later():
        time.sleep(0.4)  # the mutations below are waiting by now
        try:
            engine.materialise_many([from_snapshot(entry.snapshot)])
        finally:
            connection.close()  # this thread's own connection

    writer = threading.Thread(target=materialise_later)
    writer.start()
    ctx = context(env)
    buffer = Buffer.from_settings()
    later = datetime.now(UTC) + timedelta(hours=5)
    rescheduled = mutations.reschedule(ctx, run_id, later, buffer=buffer, now_ms=now_ms(), wait_ms=5_000)
    updated = mutations.update_metadata(
        ctx, run_id, replace=None, operations=[MetadataOperation(type="increment", key="m", value=1)], buffer=buffer,
        now_ms=now_ms(), wait_ms=5_000, limit=1024,
    )  # fmt: skip
    writer.join()
    assert (rescheduled.status, updated.status, updated.metadata) == (
        mutations.Status.OK,
        mutations.Status.OK,
        {"m": 1},
    )
    row = TaskRun.objects.get(id=run_id)
    assert (row.delay_until, row.metadata, row.status) == (later, {"m": 1}, RunStatus.DELAYED)


def test_the_drain_writes_a_buffered_runs_new_delay_and_metadata_into_its_row(api, mollifier_settings):
    cfg = mollifier_settings(DRAINER_ENABLED=True)
    run_id = api.trigger("buffered", delay="1h", metadata={"from": "trigger"})
    when = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    api.call("post", f"/api/v1/runs/{run_id}/reschedule", {"delay": when.isoformat()}, who="buffered")
    api.call("put", f"/api/v1/runs/{run_id}/metadata", {"operations": [{"type": "set", "key": "x", "value": 1}]},
             who="buffered")  # fmt: skip
    entries = lease_all(api.envs["buffered"])
    drain.materialise(Buffer.from_settings(), shard=0, entries=entries, limits=DrainLimits.from_settings(cfg),
                      now_ms=now_ms())  # fmt: skip
    row = TaskRun.objects.get(id=run_id)
    assert (row.status, row.delay_until, row.metadata) == (RunStatus.DELAYED, when, {"from": "trigger", "x": 1})


# ------------------------------------------------------------------------------------------- metadata


class InterleavedBuffer(Buffer):
    """A buffer whose first metadata write loses a race: another writer's write lands just before it."""

    def __init__(self, inner: Buffer, rival: dict):
        self.__dict__.update(inner.__dict__)
        self.rival, self.raced = rival, False

    def set_metadata(self, run_id, **kwargs):
        if not self.raced:
            self.raced = True
            super().set_metadata(run_id, **{**kwargs, "metadata_json": json.dumps(self.rival)})
        return super().set_metadata(run_id, **kwargs)


def test_a_compare_and_set_conflict_is_retried_on_the_winners_value(api):
    env = api.envs["buffered"]
    run_id = api.trigger("buffered", metadata={"n": 0})
    ctx = context(env)
    buffer = InterleavedBuffer(Buffer.from_settings(), rival={"n": 10, "rival": True})
    result = mutations.update_metadata(
        ctx, run_id, replace=None, operations=[MetadataOperation(type="increment", key="n", value=1)], buffer=buffer,
        now_ms=now_ms(), wait_ms=100, limit=1024,
    )  # fmt: skip
    assert result.metadata == {"n": 11, "rival": True}
    assert api.call("get", f"/api/v1/runs/{run_id}/metadata", who="buffered").json() == {"metadata": result.metadata}
    assert Buffer.from_settings().get(run_id, org_id=env.org_id).metadata_version == 2


@pytest.mark.parametrize("who", ["direct", "buffered"])
def test_metadata_over_the_limit_is_413_and_nothing_is_written(api, mollifier_settings, who):
    mollifier_settings(MAX_METADATA_BYTES=1024)
    run_id = api.trigger(who, metadata={"keep": 1})
    response = api.call("put", f"/api/v1/runs/{run_id}/metadata", {"metadata": {"big": "x" * 2000}}, who=who)
    assert_error(response, 413, "metadata", "1024 bytes")
    grow = {"operations": [{"type": "append", "key": "log", "value": "y" * 600}]}
    assert api.call("put", f"/api/v1/runs/{run_id}/metadata", grow, who=who).status_code == 200
    assert_error(api.call("put", f"/api/v1/runs/{run_id}/metadata", grow, who=who), 413, "metadata")
    assert api.call("get", f"/api/v1/runs/{run_id}/metadata", who=who).json()["metadata"] == {
        "keep": 1, "log": ["y" * 600]
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"metadata": [1]}, "metadata"),
        ({"operations": [{"type": "nope", "key": "a"}]}, "operations.0.type"),
        ({"operations": [{"type": "increment", "key": "a", "value": "x"}]}, "increment operation's value"),
        ({"operations": [{"type": "set", "key": "__proto__", "value": 1}]}, "operations.0.key"),
        ({"operations": [{"type": "set", "key": "$.a.constructor.b", "value": 1}]}, "operations.0.key"),
        ({"operations": [{"type": "set", "value": 1}]}, "key"),
        ({"operations": [{"type": "update", "value": 3}]}, "update operation's value"),
        ({"operations": "set"}, "operations"),
    ],
)
def test_a_bad_metadata_body_is_400_naming_the_field(api, body, fragment):
    run_id = api.trigger("buffered")
    assert_error(api.call("put", f"/api/v1/runs/{run_id}/metadata", body, who="buffered"), 400, fragment)


def test_metadata_operations_follow_the_sdks_semantics(api):
    run_id = api.trigger("direct", metadata={"tags": ["a", "b", "a"], "count": "x", "gone": 1, "one": 1})
    ops = [
        {"type": "remove", "key": "tags", "value": "a"},
        {"type": "increment", "key": "count", "value": 2},
        {"type": "delete", "key": "gone"},
        {"type": "append", "key": "one", "value": 2},
        {"type": "append", "key": "$.nested.list", "value": {"k": 1}},
        {"type": "set", "key": "$.nested.flag", "value": True},
    ]
    doc = api.call("put", f"/api/v1/runs/{run_id}/metadata", {"operations": ops}).json()
    assert doc == {"metadata": {"tags": ["b"], "count": 2, "one": [1, 2], "nested": {"list": [{"k": 1}], "flag": True}}}


def test_metadata_of_another_env_or_no_run_is_404(api):
    run_id = api.trigger("buffered")
    assert_error(api.call("get", f"/api/v1/runs/{run_id}/metadata", who="direct"), 404, "Run not found")
    assert_error(
        api.call("put", "/api/v1/runs/run_nope/metadata", {"metadata": {}}, who="direct"), 404, "Run not found"
    )


# --------------------------------------------------------------------------------------------- replay


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"payloadType": "application/super+json", "payload": {"a": 1}}, "payload"),
        ({"tags": 5}, "tags"),
        ({"maxAttempts": 0}, "maxAttempts"),
        ({"machine": "huge"}, "machine"),
        ({"delay": "whenever"}, "options.delay"),
    ],
)
def test_a_bad_replay_body_is_400_naming_the_field(api, body, fragment):
    run_id = api.trigger("direct")
    assert_error(api.call("post", f"/api/v1/runs/{run_id}/replay", body), 400, fragment)
    assert TaskRun.objects.count() == 1


def test_a_replay_of_no_run_is_404(api):
    assert_error(api.call("post", "/api/v1/runs/run_nope/replay"), 404, "Run not found")


def test_a_replay_with_an_empty_body_copies_the_original(api):
    run_id = api.trigger("direct", tags=["x"], maxAttempts=2, machine="small-2x", queue={"name": "q"})
    new = api.call("post", f"/api/v1/runs/{run_id}/replay").json()["id"]
    row = TaskRun.objects.get(id=new)
    assert (row.tags, row.max_attempts, row.machine, row.queue, row.payload) == (
        ["x"], 2, "small-2x", "q", '{"json":{"a":1}}'
    )  # fmt: skip


@pytest.mark.parametrize("who", ["direct", "buffered"])
def test_an_increment_that_overflows_is_422_and_a_huge_list_index_is_not_applied(api, who):
    run_id = api.trigger(who, metadata={"big": 1e308})
    path = f"/api/v1/runs/{run_id}/metadata"
    overflow = {"operations": [{"type": "increment", "key": "big", "value": 1e308}]}
    assert_error(api.call("put", path, overflow, who=who), 422, "not finite")
    huge = {"operations": [{"type": "set", "key": "$.list[99999999]", "value": 1}]}
    doc = api.call("put", path, huge, who=who).json()["metadata"]
    assert doc["list"] == [] and float(doc["big"]) == pytest.approx(1e308)  # jsonb may answer 1e308 as an integer


# ------------------------------------------------------------------------------ metadata limit at trigger


LIMIT = 256 * 1024  # MAX_METADATA_BYTES' default: the limit a metadata `set` already enforces (413)


def metadata_of(size: int) -> dict[str, str]:
    """Metadata whose compact JSON encoding is exactly ``size`` UTF-8 bytes."""
    doc = {"k": "x" * (size - len('{"k":""}'))}
    assert len(json.dumps(doc, separators=(",", ":")).encode()) == size
    return doc


def listed(api, who: str) -> list[str]:
    return [run["id"] for run in api.call("get", "/api/v1/runs", who=who).json()["data"]]


@pytest.mark.parametrize("who", ["direct", "buffered"])
def test_a_trigger_with_metadata_over_the_limit_is_413_naming_options_metadata(api, who):
    body = {"payload": '{"json":{}}', "options": {"payloadType": "application/super+json", "metadata": None}}
    body["options"]["metadata"] = metadata_of(1024 * 1024)  # the 1 MiB of issue 16

    assert_error(api.call("post", "/api/v1/tasks/hello/trigger", body, who=who), 413,
                 "options.metadata: 1048576 bytes exceeds the limit of 262144 bytes")  # fmt: skip
    body["options"]["metadata"] = metadata_of(LIMIT + 1)
    assert_error(api.call("post", "/api/v1/tasks/hello/trigger", body, who=who), 413, "options.metadata")
    assert listed(api, who) == []  # nothing was written or buffered

    at_limit = api.trigger(who, metadata=metadata_of(LIMIT))  # the limit itself is allowed, as for `set`
    assert listed(api, who) == [at_limit]


@pytest.mark.parametrize("who", ["direct", "buffered"])
def test_a_batch_item_with_metadata_over_the_limit_refuses_the_stream(api, who):
    batch = api.call("post", "/api/v3/batches", {"runCount": 2}, who=who).json()
    lines = [
        {"index": 0, "task": "hello", "options": {"metadata": {"ok": 1}}},
        {"index": 1, "task": "hello", "options": {"metadata": metadata_of(LIMIT + 1)}},
    ]
    body = "".join(json.dumps(line) + "\n" for line in lines)

    response = api.call("post", f"/api/v3/batches/{batch['id']}/items", raw=body.encode(),
                        content_type="application/x-ndjson", who=who)  # fmt: skip

    assert_error(response, 413, "options.metadata", "exceeds the limit of 262144 bytes")
    assert listed(api, who) == []  # validated before anything was written


def test_a_replay_whose_metadata_is_over_the_limit_is_413(api):
    original = api.trigger("buffered", metadata={"small": True})
    too_big = {"metadata": metadata_of(LIMIT + 1)}

    assert_error(api.call("post", f"/api/v1/runs/{original}/replay", too_big, who="buffered"), 413,
                 "options.metadata")  # fmt: skip
    # An original stored before the limit applied at trigger time: its replay copies the metadata, and is refused.
    old = trigger_run(api.envs["direct"], metadata=metadata_of(1024 * 1024))
    assert_error(api.call("post", f"/api/v1/runs/{old.id}/replay"), 413, "options.metadata: 1048576 bytes")
    assert set(listed(api, "buffered")) == {original}
    assert set(listed(api, "direct")) == {old.id}
