"""Django test-suite settings for run.py's Django side (issue 17): one side's Postgres address
from the environment (COMPAT_DJANGO_HOST, _PORT, _USER, _PASSWORD, _DB, _TEST_PREFIX), psycopg
3, and the time-limited runner of ``compat_django_runner``. Both sides share one primary, so
each names its test databases after its side."""

import os

_env = os.environ.get
_prefix = _env("COMPAT_DJANGO_TEST_PREFIX", "test_compat")


def _db(suffix):
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": _env("COMPAT_DJANGO_HOST", "127.0.0.1"),
        "PORT": _env("COMPAT_DJANGO_PORT", "5432"),
        "USER": _env("COMPAT_DJANGO_USER", "postgres"),
        "PASSWORD": _env("COMPAT_DJANGO_PASSWORD", "postgres"),
        "NAME": _env("COMPAT_DJANGO_DB", "postgres"),
        "TEST": {"NAME": f"{_prefix}{suffix}"},
    }


DATABASES = {"default": _db(""), "other": _db("_other")}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
TEST_RUNNER = "compat_django_runner.TimeLimitedRunner"
