"""What a doctor check reports (`Check`, `DoctorReport`) and the small text helpers every check
uses to say what it found: the first line of an error, the root cause of a wrapped network failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

__all__ = [
    "Check",
    "DoctorReport",
    "Status",
    "fail",
    "first_line",
    "is_local",
    "ok",
    "root_cause",
    "skip",
    "warn",
]

Status = Literal["OK", "WARN", "FAIL", "SKIP"]
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


@dataclass(frozen=True)
class Check:
    """The outcome of one check: a short name, a status and what was found or what to fix."""

    name: str
    status: Status
    message: str

    def format(self) -> str:
        return f"{self.status:<5} {self.name:<15} {self.message}"


@dataclass
class DoctorReport:
    """The checks of one run, in order; the exit status is 1 when any of them FAILs."""

    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAIL"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def counts(self) -> str:
        parts = []
        for status in ("OK", "WARN", "FAIL", "SKIP"):
            n = sum(1 for c in self.checks if c.status == status)
            if n:
                parts.append(f"{n} {status}")
        return ", ".join(parts)

    def lines(self) -> list[str]:
        return [c.format() for c in self.checks]


def ok(name: str, message: str) -> Check:
    return Check(name, "OK", message)


def warn(name: str, message: str) -> Check:
    return Check(name, "WARN", message)


def fail(name: str, message: str) -> Check:
    return Check(name, "FAIL", message)


def skip(name: str, message: str) -> Check:
    return Check(name, "SKIP", message)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def root_cause(exc: BaseException) -> str:
    """The innermost OS error of a wrapped network failure ("Connection refused"), else the first line.

    requests and urllib3 wrap a refused connection three levels deep, with URLs in every message.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        for nxt in (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return first_line(exc)


def is_local(url: str) -> bool:
    return (urlsplit(url).hostname or "") in _LOCAL_HOSTS
