"""Automation: ``nox`` runs the tests, lint and type check; ``nox -s bench`` the benchmarks."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "bench", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "bench", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    session.install("-e", ".", "mypy>=1.11")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks of bench/ (they measure; they never fail on a number)."""
    session.install("-e", ".[bench]")
    session.run("python", "bench/run.py", *session.posargs)
