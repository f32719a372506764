"""Domain model (docs/architecture.md#domain-model): tenants, API keys, task runs, batches and alerts.

Only ``runs.engine`` writes ``TaskRun`` rows; everything here is schema plus small read helpers.
"""

from __future__ import annotations

import hashlib

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex, HashIndex
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

MAX_TAGS = 10
MAX_TAG_LENGTH = 128
MAX_IDEMPOTENCY_KEY_LENGTH = 2048


class Organization(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    feature_flags = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def mollifier_enrolled(self) -> bool:
        return flags_enrol_mollifier(self.feature_flags)


def flags_enrol_mollifier(feature_flags: object) -> bool:
    """Strict enrolment: only a JSON object whose ``mollifier`` is JSON ``true`` enrols the org.

    ``{"mollifier": "false"}`` is a truthy string in Python; treating it as enrolment would divert an org
    that asked not to be, so anything but the boolean ``True`` means "not enrolled".
    """
    return isinstance(feature_flags, dict) and feature_flags.get("mollifier") is True


class Environment(models.Model):
    class Type(models.TextChoices):
        DEVELOPMENT = "DEVELOPMENT"
        STAGING = "STAGING"
        PRODUCTION = "PRODUCTION"
        PREVIEW = "PREVIEW"

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="environments")
    slug = models.SlugField(max_length=64)
    type = models.CharField(max_length=16, choices=Type.choices, default=Type.DEVELOPMENT)
    alert_webhook_url = models.URLField(blank=True, help_text="Optional: failed-run alerts are POSTed here.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["org__slug", "slug"]
        constraints = [models.UniqueConstraint(fields=["org", "slug"], name="environment_unique_slug_per_org")]

    def __str__(self) -> str:
        return f"{self.org.slug}/{self.slug}"


class ApiKey(models.Model):
    """A bearer secret for one environment. Only the SHA-256 of the secret is stored."""

    env = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="api_keys")
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=16, editable=False, help_text="First characters, for display only.")
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.env})"

    @staticmethod
    def hash_secret(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class RunStatus(models.TextChoices):
    PENDING = "PENDING"
    DELAYED = "DELAYED"
    EXECUTING = "EXECUTING"
    COMPLETED_SUCCESSFULLY = "COMPLETED_SUCCESSFULLY"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"
    CANCELED = "CANCELED"
    SYSTEM_FAILURE = "SYSTEM_FAILURE"
    CRASHED = "CRASHED"
    EXPIRED = "EXPIRED"
    TIMED_OUT = "TIMED_OUT"


TERMINAL_STATUSES = frozenset(
    {
        RunStatus.COMPLETED_SUCCESSFULLY,
        RunStatus.COMPLETED_WITH_ERRORS,
        RunStatus.CANCELED,
        RunStatus.SYSTEM_FAILURE,
        RunStatus.CRASHED,
        RunStatus.EXPIRED,
        RunStatus.TIMED_OUT,
    }
)


class BatchStatus(models.TextChoices):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    PARTIAL_FAILED = "PARTIAL_FAILED"
    ABORTED = "ABORTED"


class BatchTaskRun(models.Model):
    id = models.CharField(primary_key=True, max_length=40)
    env = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="batches")
    run_count = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=BatchStatus.choices, default=BatchStatus.PENDING)
    idempotency_key = models.CharField(max_length=MAX_IDEMPOTENCY_KEY_LENGTH, null=True, blank=True)
    items_received = models.PositiveIntegerField(default=0)
    sealed = models.BooleanField(default=False)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "batch"
        verbose_name_plural = "batches"  # not Django's default "batchs"
        constraints = [
            models.UniqueConstraint(
                fields=["env", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="batch_unique_idempotency_key",
            ),
            models.CheckConstraint(condition=Q(items_received__lte=models.F("run_count")), name="batch_items_le_count"),
        ]

    def __str__(self) -> str:
        return self.id


class TaskRun(models.Model):
    """One run. ``id`` is the friendly id minted at trigger time; ``created_at`` is that trigger time."""

    id = models.CharField(primary_key=True, max_length=40)
    # No single-column indexes on env, org and batch: the composite indexes below lead with them, and every
    # index costs the drain's bulk insert (measured: ~14 µs of ~30 µs per row go to secondary indexes).
    env = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="runs", db_index=False)
    # Denormalised from env so list filters and admin need no join.
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="runs", db_index=False)
    task_identifier = models.CharField(max_length=128)
    status = models.CharField(max_length=32, choices=RunStatus.choices, default=RunStatus.PENDING)
    payload = models.TextField(null=True, blank=True)
    payload_type = models.CharField(max_length=64, default="application/json")
    metadata = models.JSONField(null=True, blank=True)
    tags = ArrayField(models.CharField(max_length=MAX_TAG_LENGTH), default=list, blank=True)
    idempotency_key = models.CharField(max_length=MAX_IDEMPOTENCY_KEY_LENGTH, null=True, blank=True)
    idempotency_key_user = models.TextField(null=True, blank=True)
    idempotency_key_expires_at = models.DateTimeField(null=True, blank=True)
    queue = models.CharField(max_length=128, null=True, blank=True)
    concurrency_key = models.CharField(max_length=256, null=True, blank=True)
    delay_until = models.DateTimeField(null=True, blank=True)
    ttl = models.CharField(max_length=32, null=True, blank=True)
    max_attempts = models.PositiveIntegerField(null=True, blank=True)
    max_duration = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds.")
    machine = models.CharField(max_length=16, null=True, blank=True)
    priority = models.IntegerField(default=0)
    batch = models.ForeignKey(
        BatchTaskRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs", db_index=False
    )
    batch_index = models.PositiveIntegerField(null=True, blank=True)
    # Plain ids, not foreign keys: a parent may itself still be buffered when its child's row is written.
    parent_run_id = models.CharField(max_length=40, null=True, blank=True)
    root_run_id = models.CharField(max_length=40, null=True, blank=True)
    depth = models.PositiveIntegerField(default=0)
    trace_id = models.CharField(max_length=64, null=True, blank=True)
    span_id = models.CharField(max_length=32, null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField()
    materialised_at = models.DateTimeField(db_default=Now())
    buffered = models.BooleanField(default=False, help_text="Came through the Redis buffer.")
    completed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        verbose_name = "task run"
        constraints = [
            models.UniqueConstraint(
                fields=["env", "task_identifier", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="taskrun_unique_idempotency_key",
            ),
            models.CheckConstraint(condition=Q(tags__len__lte=MAX_TAGS), name="taskrun_at_most_10_tags"),
            models.CheckConstraint(
                condition=Q(batch__isnull=True) | Q(batch_index__isnull=False), name="taskrun_batch_has_index"
            ),
        ]
        indexes = [
            # Newest-first listing per env with a stable cursor (GET /api/v1/runs).
            models.Index(fields=["env", "-created_at", "-id"], name="taskrun_env_created"),
            models.Index(fields=["status", "created_at"], name="taskrun_status_created"),
            models.Index(fields=["batch", "batch_index"], name="taskrun_batch_index"),
            models.Index(fields=["org", "status"], name="taskrun_org_status"),
            # Tag filters (API ``filter[tag]``, admin search) and admin search by idempotency key.
            GinIndex(fields=["tags"], name="taskrun_tags"),
            HashIndex(fields=["idempotency_key"], name="taskrun_idempotency_key"),
        ]

    def __str__(self) -> str:
        return self.id


class RunAlert(models.Model):
    """One row per alert delivered for a failed run; unique per channel so a retried task alerts once."""

    class Channel(models.TextChoices):
        LOG = "log"
        WEBHOOK = "webhook"

    run = models.ForeignKey(TaskRun, on_delete=models.CASCADE, related_name="alerts")
    channel = models.CharField(max_length=16, choices=Channel.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    detail = models.TextField(blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "channel"], name="runalert_once_per_channel")]

    def __str__(self) -> str:
        return f"{self.channel} alert for {self.run_id}"


MAX_REQUEST_KEY_LENGTH = 256


class RequestKey(models.Model):
    """A request key (``x-trigger-request-idempotency-key``) answered while the buffer's Redis was unreachable,
    written in the transaction of the run's row (docs/api.md#request-idempotency): a retry during the outage
    finds it here, and ``restored`` turns true once it is back in Redis. Rows live as long as the Redis key
    would (``REQUEST_KEY_TTL_S``) and are deleted after that by the restore that finds them expired."""

    env = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    task_identifier = models.CharField(max_length=128)
    key = models.CharField(max_length=MAX_REQUEST_KEY_LENGTH)
    run_id = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    restored = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["env", "task_identifier", "key"], name="requestkey_unique_per_env_task")
        ]
        indexes = [
            models.Index(fields=["created_at"], name="requestkey_created_at"),  # expiry
            models.Index(fields=["id"], name="requestkey_not_restored", condition=Q(restored=False)),
        ]

    def __str__(self) -> str:
        return f"{self.key} → {self.run_id}"


class AmbiguousAttempt(models.Model):
    """A keyed trigger whose script call failed in a way that may have run it (a timeout or a reset after the
    command was sent, not an open breaker): run ``run_id`` may be in the buffer holding the request key, its
    answer lost (docs/architecture.md#request-keys-across-an-outage). Written by the web only then, best effort.
    A fail-open retry of the key answers the attempt if the drain wrote it, else sets ``superseded_by`` to its
    own run in its transaction, and the drain acks a superseded attempt without a row. Rows are pruned after
    ``REQUEST_KEY_TTL_S``, as many as each new one."""

    env = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    task_identifier = models.CharField(max_length=128)
    key = models.CharField(max_length=MAX_REQUEST_KEY_LENGTH)
    run_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField()
    superseded_by = models.CharField(max_length=64, null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["env", "task_identifier", "key"], name="ambiguous_attempt_key"),
            models.Index(fields=["created_at"], name="ambiguous_attempt_created_at"),  # expiry
        ]

    def __str__(self) -> str:
        return f"{self.key} ?→ {self.run_id}"


class BatchItem(models.Model):
    """Which run each index of a batch became. Unique per (batch, index): the SDK may resend the whole
    item stream, and a resent index must not make a second run."""

    batch = models.ForeignKey(BatchTaskRun, on_delete=models.CASCADE, related_name="items")
    index = models.PositiveIntegerField()
    run_id = models.CharField(max_length=40, db_index=True)  # settling finds batches by their runs
    task_identifier = models.CharField(max_length=128)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["batch", "index"], name="batchitem_unique_index")]
        ordering = ["batch", "index"]

    def __str__(self) -> str:
        return f"{self.batch_id}[{self.index}] → {self.run_id}"


class BulkActionType(models.TextChoices):
    CANCEL = "CANCEL"
    REPLAY = "REPLAY"


class BulkActionStatus(models.TextChoices):
    PENDING = "PENDING"  # queued or running
    COMPLETED = "COMPLETED"
    ABORTED = "ABORTED"


class BulkAction(models.Model):
    """A cancel or replay over many runs of one env, rows and buffered entries alike
    (docs/architecture.md#bulk-actions). ``runs.bulk`` executes it in chunks from a Celery task; the row
    carries its selection, its progress counts and where the walk stands, so a restarted task resumes.
    """

    id = models.CharField(primary_key=True, max_length=40)
    env = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="bulk_actions", db_index=False)
    name = models.CharField(max_length=255, blank=True)
    type = models.CharField(max_length=8, choices=BulkActionType.choices)
    status = models.CharField(max_length=12, choices=BulkActionStatus.choices, default=BulkActionStatus.PENDING)
    # The selection: list query parameters (``filter[...]``) as a dict, or the given run ids.
    filter = models.JSONField(null=True, blank=True)
    run_ids = models.JSONField(null=True, blank=True)
    # Where the walk stands: the list cursor (filter) or the index of the next run id (run ids).
    cursor = models.TextField(blank=True)
    position = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    success = models.PositiveIntegerField(default=0)
    failure = models.PositiveIntegerField(default=0)
    chunks = models.PositiveIntegerField(default=0)
    abort_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "bulk action"
        indexes = [models.Index(fields=["env", "-created_at", "-id"], name="bulkaction_env_created")]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"
