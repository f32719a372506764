"""Django settings. Everything deploy-specific comes from the environment; nothing secret is committed.

``DATABASE_URL``, ``REDIS_URL`` (the Celery broker, and the buffer unless ``BUFFER_REDIS_URL`` is set)
locate the services; every ``MOLLIFIER_*`` variable is parsed into the
typed ``MOLLIFIER`` object (``mollifier_project/config.py``), which the code reads as
``django.conf.settings.MOLLIFIER``.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
import django_stubs_ext
from kombu import Exchange, Queue

from mollifier_project.config import (
    broker_transport_options,
    check_broker_redis_url,
    check_secret_key,
    load_settings,
    redis_location,
)

# Django's generic classes subscriptable at run time, as django-stubs types them (``admin.ModelAdmin[TaskRun]``).
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = os.environ.get("DJANGO_DEBUG", "0").lower() in {"1", "true", "yes", "on"}
# The key signs sessions, CSRF tokens and presigned packet URLs, so a key anyone can read lets anyone mint
# them. The repository's fallback is for DJANGO_DEBUG only; without DEBUG every process (gunicorn and celery
# run no system checks) refuses to load these settings. `make services` generates a key once in
# .data/secret_key and exports it in .data/services.env (docs/operations.md#secret-key).
SECRET_KEY = check_secret_key(os.environ.get("DJANGO_SECRET_KEY", ""), debug=DEBUG)
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h]

INSTALLED_APPS = [
    "mollifier_project.admin_site.MollifierAdminConfig",  # django.contrib.admin, leading to the dashboard
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "runs",
    "api",
    "buffer",
    "drainer",
    "sweep",
    "telemetry",
    "demo",
]

MIDDLEWARE = [
    # Outermost: every /api/ answer is JSON with an x-request-id, whatever fails below (docs/api.md#bad-input).
    "api.middleware.ApiErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's static files from gunicorn itself (no separate web server in this deployment).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mollifier_project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "mollifier_project.wsgi.application"

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/mollifier")
# Persistent connections: measured 1.9k req/s for a one-INSERT view with CONN_MAX_AGE, 200 without.
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=600, conn_health_checks=True),
}
DATABASES["default"].setdefault("OPTIONS", {})
DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", 5)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
check_broker_redis_url(REDIS_URL)
# The buffer's Redis, separate from the broker's (docs/operations.md#redis-cluster): empty = REDIS_URL.
# ``redis+cluster://host:port`` makes it a Redis Cluster. Read at call time (``buffer.client.buffer_redis_url``).
BUFFER_REDIS_URL = os.environ.get("BUFFER_REDIS_URL", "")
if BUFFER_REDIS_URL:
    redis_location(BUFFER_REDIS_URL)

MOLLIFIER = load_settings()

# The API checks body sizes itself (413 naming the limit, docs/api.md#trigger-a-task); Django's 2.5 MB cap would answer 400.
DATA_UPLOAD_MAX_MEMORY_SIZE = None

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# The admin shows times as "2025-01-05 15:04:05 UTC": seconds and the time zone (mollifier_project/formats/en).
# A DATETIME_FORMAT setting alone would not do: the locale's format ("Jan. 5, 2025, 3:04 p.m.") wins over it.
FORMAT_MODULE_PATH = ["mollifier_project.formats"]

# Packets (large payloads the SDK uploads, docs/api.md#packets) go through the "packets" storage: the file system
# under PACKETS_ROOT by default; production points it at S3-compatible object storage (docs/operations.md#packet-storage).
PACKETS_ROOT = os.environ.get("PACKETS_ROOT") or str(BASE_DIR / ".data" / "packets")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "packets": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        # Packets are written once (runs/packets.py store): created exclusively, so of two first uploads of one
        # path only one lands; a retry of the same bytes is answered without writing (docs/api.md#packets).
        "OPTIONS": {"location": PACKETS_ROOT, "allow_overwrite": False},
    },
}
if os.environ.get("PACKETS_S3_BUCKET"):  # needs django-storages[s3] installed (docs/operations.md#packet-storage)
    STORAGES["packets"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": os.environ["PACKETS_S3_BUCKET"],
            "endpoint_url": os.environ.get("PACKETS_S3_ENDPOINT_URL") or None,
            "region_name": os.environ.get("PACKETS_S3_REGION") or None,
            "location": os.environ.get("PACKETS_S3_PREFIX", ""),
            "file_overwrite": True,
            "default_acl": None,
        },
    }

STATIC_URL = "static/"
# No STATIC_ROOT: WhiteNoise finds static files in the apps at request time, so nothing needs collecting.
WHITENOISE_USE_FINDERS = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Celery: Redis as broker. Queues per docs/architecture.md#processes-and-data-flow: drain, sweep, default.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
# A Sentinel-managed broker (docs/operations.md#redis-sentinel): CELERY_BROKER_URL=sentinel://host:port;sentinel://…
# (kombu's Sentinel transport) and the name the sentinels monitor its primary under; refused at start-up without it.
CELERY_BROKER_TRANSPORT_OPTIONS = broker_transport_options(
    CELERY_BROKER_URL,
    os.environ.get("CELERY_BROKER_SENTINEL_MASTER", ""),
    os.environ.get("CELERY_BROKER_SENTINEL_PASSWORD", ""),
)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
# Declared, not only routed to: Flower's broker page lists task_queues (with the default queue) whenever no
# live worker has reported its active queues yet, so all three show, not just "default". Each queue gets its
# own direct exchange and routing key, as Celery creates a missing queue: a Queue without them would be bound
# to the default exchange and key, and every task would then land in all three queues. A worker started
# without -Q consumes all three; the Procfile gives the sweep a worker of its own (docs/operations.md#processes).
CELERY_TASK_QUEUES = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name) for name in ("drain", "sweep", "default")
)
CELERY_TASK_ROUTES = {
    "drainer.*": {"queue": "drain"},
    "sweep.*": {"queue": "sweep"},
}
# The drain's fan-out runs every DRAIN_INTERVAL_S and sends a shard task per busy shard: as monitoring events
# they would be nearly everything in Flower's task list. Task.send_events=False (set through annotations)
# keeps a worker from sending task events for them; the drain is watched through /metrics and its logs.
# Sweep ticks (every SWEEP_INTERVAL_S) and run alerts still show. Flower's --max_tasks (Procfile) bounds the rest.
CELERY_TASK_ANNOTATIONS = {name: {"send_events": False} for name in ("drainer.fan_out", "drainer.drain_shard")}
# One task at a time per process, so expired drain ticks are dropped rather than hoarded (docs/architecture.md#drain).
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# And none reserved beyond the ones running (Celery 5.6+, Redis brokers): a prefork worker otherwise reserves one
# more message per process while its children run, and a worker killed then takes that shard task with it while
# the shard's drain:sent mark keeps every tick away until the mark lapses (docs/architecture.md#kick).
CELERY_WORKER_DISABLE_PREFETCH = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fix-up closes every database connection before and after each task unless this is set; then it
# closes them once per this many tasks. Set, a worker keeps its Postgres session between tasks (a drain task no
# longer pays for a new one; docs/operations.md#postgres); ``mollifier_project.celery`` drops a broken or aged one
# around every task instead, as Django does around requests.
CELERY_DB_REUSE_MAX = 1000
CELERY_TIMEZONE = "UTC"
# Beat entries exist only when their feature flag is on (docs/architecture.md#drain, #stale-sweep): off means not scheduled at all.
CELERY_BEAT_SCHEDULE = {}
# Several beats, one ticking (docs/operations.md#several-beats): on, each beat sends only while it holds the beat
# lease. Off: Celery's own scheduler, and every beat started ticks.
if MOLLIFIER.BEAT_LEASE_ENABLED:
    CELERY_BEAT_SCHEDULER = "drainer.beat:LeasedScheduler"
if MOLLIFIER.DRAINER_ENABLED:
    CELERY_BEAT_SCHEDULE["drain-fan-out"] = {
        "task": "drainer.fan_out",
        "schedule": MOLLIFIER.DRAIN_INTERVAL_S,
        "options": {"expires": MOLLIFIER.DRAIN_INTERVAL_S},
    }
if MOLLIFIER.STALE_SWEEP_ENABLED:
    CELERY_BEAT_SCHEDULE["sweep-fan-out"] = {
        "task": "sweep.fan_out",
        "schedule": MOLLIFIER.SWEEP_INTERVAL_S,
        "options": {"expires": MOLLIFIER.SWEEP_INTERVAL_S},
    }

# Prometheus multiprocess mode (README "Metrics"): the Procfile sets PROMETHEUS_MULTIPROC_DIR for web and
# worker, so their counters add up in /metrics; unset (tests, runserver) each process counts on its own.
PROMETHEUS_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if PROMETHEUS_MULTIPROC_DIR:
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)

# JSON lines by default: env, org and run ids travel as fields (docs/architecture.md#telemetry); LOG_FORMAT=plain for reading by eye.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "mollifier_project.logs.JsonFormatter"},
        "plain": {
            "()": "mollifier_project.logs.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain" if os.environ.get("LOG_FORMAT", "json") == "plain" else "json",
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
