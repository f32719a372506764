"""``manage.py mollifier_tenant --org acme --env prod [--enrol]``: create/reuse a tenant and print a new key."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from runs.tenants import ensure_tenant, issue_api_key


class Command(BaseCommand):
    help = "Create (or reuse) an organisation and environment, make an API key and print its secret once."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organisation slug")
        parser.add_argument("--env", required=True, help="environment slug (dev, staging, prod, preview…)")
        parser.add_argument("--enrol", action="store_true", help="enrol the organisation in the mollifier")
        parser.add_argument("--quiet", action="store_true", help="print only the secret")

    def handle(self, *args, org: str, env: str, enrol: bool, quiet: bool, **options):
        tenant = ensure_tenant(org, env, enrol=enrol)
        key, secret = issue_api_key(tenant.env)
        if quiet:
            self.stdout.write(secret)
            return
        verb = lambda created: "created" if created else "reused"  # noqa: E731
        self.stdout.write(f"organisation {tenant.org.slug} (id {tenant.org.id}): {verb(tenant.org_created)}")
        self.stdout.write(
            f"environment  {tenant.env.slug} (id {tenant.env.id}, {tenant.env.type}): {verb(tenant.env_created)}"
        )
        self.stdout.write(f"enrolled in the mollifier: {'yes' if tenant.org.mollifier_enrolled else 'no'}")
        self.stdout.write(f"API key {key.prefix}… created. Secret (shown once, store it now):")
        self.stdout.write(self.style.SUCCESS(secret))
