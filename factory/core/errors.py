"""Errors the CLI turns into one line and an exit code (2 bad input, 1 anything else)."""

from __future__ import annotations

from factory.core.redact import scrub


def first_line(error: BaseException | str) -> str:
    """The first line of an error's text: one-line messages never carry a traceback, a server page or a
    credential (a server may echo the request's Authorization header in its error body)."""
    return scrub((str(error).strip().splitlines() or [""])[0])


class FactoryError(Exception):
    """A failure the user should read as one line; `exit_code` is what the CLI returns."""

    exit_code = 1


class UserError(FactoryError):
    """Bad input: a broken recipe, a missing file, an unknown model id."""

    exit_code = 2


class RecipeInvalid(UserError):
    """One or more problems in recipe files, each already formatted as `file:line: field: message`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class HubUnreachable(FactoryError):
    """The Hub (or HF_ENDPOINT) did not answer: a network problem, not bad input."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) turned into an exception, so that every cleanup a Ctrl-C runs runs too."""

    def __init__(self, signum: int, name: str):
        super().__init__(name)
        self.signum, self.name = signum, name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
