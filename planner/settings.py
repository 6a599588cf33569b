"""Settings for the portslice planner, configured by environment.

Defaults give the quick start: SQLite under ``var/``, a broker that needs no
server, a secret key generated on first run. Production sets ``DATABASE_URL``
(PostgreSQL), ``CELERY_BROKER_URL`` (Redis or RabbitMQ), ``SECRET_KEY`` or
``SECRET_KEY_FILE``, ``ALLOWED_HOSTS`` and ``DEBUG``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from csp.constants import NONCE, NONE, SELF, UNSAFE_INLINE

from allocator import DEFAULT_DRAIN
from contract.broker import filesystem_options, filesystem_transport

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str = "False") -> bool:
    value = os.environ.get(name, default).strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"{name}: expected a boolean, got {value!r}")


def envint(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def envsecret(name: str) -> str | None:
    """Read a secret from ``NAME`` or from the file named by ``NAME_FILE``."""
    if value := os.environ.get(name):
        return value
    if path := os.environ.get(f"{name}_FILE"):
        return Path(path).read_text().strip()
    return None


VAR_DIR = Path(os.environ.get("PORTSLICE_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def generated_secret_key() -> str:
    # Quick start only: a key made once and kept under var/ (git-ignored), so
    # sessions survive restarts without anyone committing a key.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = envsecret("SECRET_KEY") or generated_secret_key()
DEBUG = envbool("DEBUG")
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "django_celery_beat",
    "axes",
    "planner",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "planner.middleware.BodySizeLimitMiddleware",
    "planner.middleware.RefuseNulMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "planner.audit.AuditActorMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "planner.urls"
WSGI_APPLICATION = "planner.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "csp.context_processors.nonce",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        # DATABASE_URL_FILE too: the URL carries the password (docker-compose.yml secrets).
        envsecret("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'portslice.sqlite3'}",
        conn_max_age=envint("DB_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # BEGIN IMMEDIATE takes SQLite's write lock when a transaction starts, so a
    # service's check-then-write (the slice overlap check) cannot interleave
    # with another writer; WAL lets readers go on meanwhile.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # whitenoise serves the collected assets from the app itself, so the UI
    # works offline and without a separate web server in the quick start.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# plotly.js comes from the plotly package itself (planner/staticfinders.py): no CDN.
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "planner.staticfinders.PlotlyFinder",
]

# The operator UI (planner/ui): everything but the login page needs a session.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

# Login throttling (django-axes): after LOGIN_FAILURE_LIMIT wrong passwords for one
# user name from one address, that pair is refused (429), the right password
# included, until LOGIN_COOLOFF_MINUTES pass or an admin runs `manage.py axes_reset`
# (docs/operations.md). The pair, not the name alone: a guesser elsewhere cannot
# lock a person out. Failures are kept in the database (axes' own tables).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = envint("LOGIN_COOLOFF_MINUTES", 15) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False

# HTTPS in production (README "Production"): all off for the quick start on
# http://127.0.0.1, all on behind TLS so that `manage.py check --deploy` is clean.
SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES")
CSRF_COOKIE_SECURE = envbool("SECURE_COOKIES")
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT")
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS")
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD")
# Behind a proxy that terminates TLS: the header it sets and its value, e.g.
# "X-Forwarded-Proto: https". Only when the proxy always sets (or strips) it.
if _proxy_header := os.environ.get("SECURE_PROXY_SSL_HEADER", "").strip():
    _name, _, _value = _proxy_header.partition(":")
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _name.strip().upper().replace("-", "_"), _value.strip())

# Content-Security-Policy (django-csp): scripts only from this server, or
# inline with the request's nonce ({{ request.csp_nonce }}); no plugins, no
# framing. Inline styles are allowed: the admin, DRF's pages and Plotly set them.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# Ed25519 private keys for bundle signing: files, never rows (planner/signing.py).
SIGNING_KEY_DIR = Path(os.environ.get("SIGNING_KEY_DIR", VAR_DIR / "signing-keys"))
BUNDLE_TTL_SECONDS = envint("BUNDLE_TTL_SECONDS", 7 * 24 * 3600)

# Plan applies and inventory writes of one datacenter take turns (planner/services/locks.py);
# a writer waits this long for the turn, then gets 409 "try again".
PLAN_LOCK_WAIT_SECONDS = envint("PLAN_LOCK_WAIT_SECONDS", 10)
# A steering table waiting for another process's publish (planner.tasks.publish_steering)
# tries again this much later.
STEERING_RETRY_SECONDS = 0.5
# How long a slice taken from its machine keeps steering to it (make-before-break).
DRAIN_SECONDS = envint("DRAIN_SECONDS", int(DEFAULT_DRAIN.total_seconds()))

# One cache for every web process (the datacenter page's headroom, keyed by
# the newest write): with a cache per gunicorn worker, the view after a write
# lands on a worker that computes it again. Redis in production; the quick
# start's single process does with local memory.
CACHE_URL = os.environ.get("CACHE_URL", "locmem://")


def cache_backend(url: str) -> dict[str, str]:
    """Django's cache settings for ``CACHE_URL``: ``redis://…`` or ``locmem://``."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}
    if url == "locmem://":
        return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    raise ValueError(f"CACHE_URL={url!r} is not redis://… or locmem://")


CACHES = {"default": cache_backend(CACHE_URL)}

# The quick start needs no broker server: kombu's filesystem transport passes
# messages through folders under var/ (and keeps its exchange tables there, not
# in a control/ folder of whatever directory a process started in). Production
# points this at Redis or RabbitMQ.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem"):
    # Messages written whole (contract/broker.py says why), through var/broker.
    CELERY_BROKER_TRANSPORT = filesystem_transport()
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        **filesystem_options(VAR_DIR / "broker"),
        "processed_folder": str(VAR_DIR / "broker-processed"),
    }
for _folder in CELERY_BROKER_TRANSPORT_OPTIONS.values():
    if isinstance(_folder, str):
        Path(_folder).mkdir(parents=True, exist_ok=True)
# Beat reads its schedule from the database (django-celery-beat), so operators
# change intervals in the admin without a deploy; migration 0006_live_loop
# creates the default entries.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]

MAX_REQUEST_BODY = 1024 * 1024  # 1 MiB; larger bodies get 413
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY
METRICS_TOKEN = envsecret("METRICS_TOKEN")
USAGE_SAMPLE_SECONDS = envint("USAGE_SAMPLE_SECONDS", 60)
USAGE_RETENTION_DAYS = envint("USAGE_RETENTION_DAYS", 14)
# An agent that sent no ack and no usage for this long is stale: shown in the API
# and /metrics, and given no new slices by rebalance until it reports again.
AGENT_STALE_MINUTES = envint("AGENT_STALE_MINUTES", 10)
# The quick start without root only (make run sets it): egress IPs in 127.0.0.0/8, which
# Linux answers on without privilege. Off, a loopback address is refused as ever.
DEMO_LOOPBACK_EGRESS = envbool("DEMO_LOOPBACK_EGRESS")
# The exhaustion forecast (planner/forecast.py): one demand point per step over the
# usage history, no forecast from less than the minimum history, and IPs needed
# counted at the horizon (the alert rules' default horizon too).
FORECAST_STEP_SECONDS = envint("FORECAST_STEP_SECONDS", 3600)
FORECAST_MIN_HISTORY_SECONDS = envint("FORECAST_MIN_HISTORY_SECONDS", 86400)
FORECAST_HORIZON_DAYS = envint("FORECAST_HORIZON_DAYS", 7)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "planner.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["planner.api.permissions.RolePermission"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    # DRF's parsers, with a JSON one that answers deep nesting with 400.
    "DEFAULT_PARSER_CLASSES": [
        "planner.api.parsers.JSONParser",
        "planner.api.parsers.FormParser",
        "planner.api.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "planner.api.pagination.Pagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.ScopedRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "bundle": os.environ.get("THROTTLE_BUNDLE", "600/min"),
        "steering": os.environ.get("THROTTLE_STEERING", "120/min"),
        # Wrong or revoked API tokens per client address (planner.api.authentication).
        "token_failures": os.environ.get("THROTTLE_TOKEN_FAILURES", "20/min"),
    },
    "EXCEPTION_HANDLER": "planner.api.exceptions.handle",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "portslice API",
    "DESCRIPTION": "Egress IPs, port slices, plans, signed bundles and steering tables.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "planner.api.schema.add_error_responses",
    ],
    # Swagger UI's assets come from drf-spectacular-sidecar, served locally: no CDN.
    # No validator badge: it is an image from validator.swagger.io.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        # IPs and slices share active/draining.
        "LiveStateEnum": "planner.choices.SliceState",
        "MachineStateEnum": "planner.choices.MachineState",
        "RevisionStatusEnum": "planner.choices.RevisionStatus",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
