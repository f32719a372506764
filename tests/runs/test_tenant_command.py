"""``manage.py mollifier_tenant`` and strict enrolment (docs/architecture.md#domain-model), against real Postgres."""

from __future__ import annotations

import hashlib
import io
import re

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from runs.models import ApiKey, Environment, Organization, flags_enrol_mollifier
from runs.tenants import env_for_secret, revoke_keys
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db

SECRET_SHAPE = re.compile(r"^tr_(dev|stg|prod|preview)_[0-9A-Za-z]{32}$")
SECRET_IN_TEXT = re.compile(r"tr_[a-z]+_[0-9A-Za-z]{32}")


def run_command(*args: str) -> tuple[str, str]:
    """Run the command; returns (output, the one secret it printed)."""
    out = io.StringIO()
    call_command("mollifier_tenant", *args, stdout=out)
    text = out.getvalue()
    secrets = SECRET_IN_TEXT.findall(text)
    assert len(secrets) == 1, text
    return text, secrets[0]


def stored_text(secret: str) -> list[str]:
    """Every tenant row, as JSON text, that contains ``secret`` anywhere."""
    with connection.cursor() as cur:
        hits = []
        for model in (ApiKey, Environment, Organization):
            cur.execute(f"SELECT row_to_json(t)::text FROM {model._meta.db_table} t")
            hits += [row for (row,) in cur.fetchall() if secret in row]
        return hits


def test_creates_org_env_and_key_and_prints_the_secret_once():
    text, secret = run_command("--org", "acme", "--env", "prod")

    org = Organization.objects.get(slug="acme")
    env = Environment.objects.get(org=org, slug="prod")
    assert env.api_keys.count() == 1
    assert text.count(secret) == 1
    assert "organisation acme" in text
    assert "created" in text


def test_running_twice_reuses_org_and_env_and_issues_a_second_key():
    _, first = run_command("--org", "acme", "--env", "prod")
    text, second = run_command("--org", "acme", "--env", "prod")

    assert Organization.objects.filter(slug="acme").count() == 1
    env = Environment.objects.get(org__slug="acme", slug="prod")
    assert env.api_keys.count() == 2
    assert first != second
    assert env_for_secret(first) == env
    assert env_for_secret(second) == env
    assert "reused" in text


def test_enrol_flag_enrols_and_a_rerun_without_it_keeps_the_org_enrolled():
    run_command("--org", "acme", "--env", "dev", "--enrol")
    org = Organization.objects.get(slug="acme")
    assert org.feature_flags["mollifier"] is True
    assert org.mollifier_enrolled

    text, _ = run_command("--org", "acme", "--env", "dev")

    org.refresh_from_db()
    assert org.feature_flags["mollifier"] is True
    assert "enrolled in the mollifier: yes" in text


def test_without_enrol_a_new_org_is_not_enrolled():
    text, _ = run_command("--org", "acme", "--env", "dev")

    assert not Organization.objects.get(slug="acme").mollifier_enrolled
    assert "enrolled in the mollifier: no" in text


def test_enrol_keeps_other_feature_flags():
    OrganizationFactory(slug="acme", feature_flags={"mollifier": "false", "beta_ui": True})

    run_command("--org", "acme", "--env", "dev", "--enrol")

    assert Organization.objects.get(slug="acme").feature_flags == {"mollifier": True, "beta_ui": True}


def test_printed_secret_authenticates_to_its_env_and_only_its_hash_is_stored():
    _, secret = run_command("--org", "acme", "--env", "prod")

    env = env_for_secret(secret)
    assert env is not None
    assert (env.org.slug, env.slug) == ("acme", "prod")
    key = ApiKey.objects.get(env=env)
    assert key.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.startswith(key.prefix)
    assert stored_text(secret) == []
    assert env_for_secret(secret[:-1] + ("a" if secret[-1] != "a" else "b")) is None


@pytest.mark.parametrize(
    ("env_slug", "env_type", "kind"),
    [
        ("dev", Environment.Type.DEVELOPMENT, "dev"),
        ("prod", Environment.Type.PRODUCTION, "prod"),
        ("staging", Environment.Type.STAGING, "stg"),
        ("preview", Environment.Type.PREVIEW, "preview"),
    ],
)
def test_secret_shape_follows_the_env_type(env_slug, env_type, kind):
    _, secret = run_command("--org", "acme", "--env", env_slug)

    assert SECRET_SHAPE.match(secret)
    assert secret.startswith(f"tr_{kind}_")
    assert Environment.objects.get(org__slug="acme", slug=env_slug).type == env_type


def test_quiet_prints_only_the_secret():
    out = io.StringIO()
    call_command("mollifier_tenant", "--org", "acme", "--env", "dev", "--quiet", stdout=out)

    secret = out.getvalue().strip()
    assert SECRET_SHAPE.match(secret)
    assert env_for_secret(secret) is not None


@pytest.mark.parametrize(("args", "missing"), [(["--env", "dev"], "--org"), (["--org", "acme"], "--env")])
def test_missing_argument_is_named_and_nothing_is_created(args, missing):
    with pytest.raises(CommandError, match=missing):
        call_command("mollifier_tenant", *args, stdout=io.StringIO())

    assert not ApiKey.objects.exists()


def test_revoked_key_no_longer_authenticates():
    _, secret = run_command("--org", "acme", "--env", "dev")

    assert revoke_keys(ApiKey.objects.all(), timezone.now()) == 1
    assert env_for_secret(secret) is None


# ----------------------------------------------------------------------------------- enrolment


@pytest.mark.parametrize(
    "flags",
    [
        {"mollifier": "false"},
        {"mollifier": "true"},
        {"mollifier": 1},
        {"mollifier": None},
        {"mollifier": {"enabled": True}},
        {"Mollifier": True},
        {},
        [],
        ["mollifier"],
        "mollifier",
        True,
    ],
    ids=repr,
)
def test_only_json_true_enrols_stored_flags(flags):
    org = OrganizationFactory(feature_flags=flags)
    org.refresh_from_db()  # the value as it comes back from jsonb

    assert org.mollifier_enrolled is False


@pytest.mark.parametrize("flags", [None, 0, "", b"{}"], ids=repr)
def test_none_like_flags_do_not_enrol(flags):
    assert Organization(slug="x", feature_flags=flags).mollifier_enrolled is False
    assert flags_enrol_mollifier(flags) is False


@pytest.mark.parametrize("flags", [{"mollifier": True}, {"mollifier": True, "other": "x"}], ids=repr)
def test_json_true_enrols(flags):
    org = OrganizationFactory(feature_flags=flags)
    org.refresh_from_db()

    assert org.mollifier_enrolled is True
