"""Django's DiscoverRunner with a per-test time limit and a machine-readable result file.

Django's runner has no per-test limit, and "no test may wait forever" (issue 17): each test
gets COMPAT_DJANGO_TIMEOUT seconds (SIGALRM raises in the test, which then counts as timed
out). Every outcome is appended as one JSON line ``{"id", "outcome", "message"}`` to
COMPAT_DJANGO_RESULTS, which run.py compares side against side (its ``-v 2`` text output is
for people: test descriptions make it unreliable to parse)."""

import json
import os
import signal
import unittest

from django.test.runner import DiscoverRunner

LIMIT = int(os.environ.get("COMPAT_DJANGO_TIMEOUT", "60"))
RESULTS = os.environ.get("COMPAT_DJANGO_RESULTS", "")


class TestTimedOut(Exception):
    pass


def _on_alarm(signum, frame):
    raise TestTimedOut(f"Timeout (>{LIMIT}s)")


def _record(test, outcome, message=""):
    if not RESULTS:
        return
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": test.id(), "outcome": outcome, "message": message[:300]}) + "\n")


def _last_line(err):
    exc = err[1]
    if isinstance(exc, TestTimedOut):
        return "timeout", str(exc)
    text = f"{type(exc).__name__}: {exc}".strip()
    return "failed", text.splitlines()[0] if text else type(exc).__name__


class TimeLimitedResult(unittest.TextTestResult):
    def startTest(self, test):
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(LIMIT)
        super().startTest(test)

    def stopTest(self, test):
        signal.alarm(0)
        super().stopTest(test)

    def addSuccess(self, test):
        super().addSuccess(test)
        _record(test, "passed")

    def addError(self, test, err):
        super().addError(test, err)
        _record(test, *_last_line(err))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        _record(test, *_last_line(err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        _record(test, "skipped", str(reason))

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        _record(test, "skipped", "expected failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        _record(test, "failed", "unexpected success")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            _record(subtest, *_last_line(err))


class TimeLimitedRunner(DiscoverRunner):
    def get_resultclass(self):
        return TimeLimitedResult
