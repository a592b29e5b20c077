"""Starting a host for a test: a missing prerequisite (a build, a binary,
a package) fails the session with the command to run; it never skips."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

import pytest

from hosts import Missing


class Stoppable(Protocol):
    def stop(self) -> None: ...


T = TypeVar("T")
S = TypeVar("S", bound=Stoppable)


def fail_missing(problem: str) -> None:
    pytest.fail(f"end-to-end prerequisite missing: {problem}", pytrace=False)


def started(start: Callable[[], T]) -> T:
    """`start()`, or a failed session naming what is missing."""
    problem = None
    try:
        return start()
    except Missing as e:
        problem = str(e)
    fail_missing(problem)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running(start: Callable[[], S]) -> Iterator[S]:
    """`started(start)`, stopped on the way out."""
    host = started(start)
    try:
        yield host
    finally:
        host.stop()
