"""The names the Hub and git accept: model ids, repo ids, revisions, and the fields of a repo id template."""

from __future__ import annotations

from factory.core.safepath import revision_problem

REPO_TEMPLATE_FIELDS = ("org", "model", "recipe", "method", "METHOD", "bits", "group", "scheme")


def git_ref(value: str) -> str:
    """A revision is a git ref name or a commit; it is also a path in the Hugging Face cache (refs/<revision>)."""
    problem = revision_problem(value)
    if problem:
        raise ValueError(f"{value!r} is not a branch, tag or 40-hex commit: {problem}")
    return value


def model_id_problem(value: str) -> str | None:
    """Why `value` is not a model id the Hub would accept ([namespace/]name, ASCII), or None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not value.isascii():
        return f"{value!r} is not a valid Hub model id: only ASCII letters, digits, '-', '_' and '.'"
    if value.count("/") > 1:
        return f"{value!r} is not a valid Hub model id: it must be 'org/name' (one '/')"
    try:
        validate_repo_id(value)
    except HFValidationError as exc:
        reason = str(exc).splitlines()[0].split(": '")[0].rstrip(".")
        return f"{value!r} is not a valid Hub model id: {reason}"
    return None


def hub_repo_id_problem(name: str) -> str | None:
    """The Hub's naming rules for `namespace/name` (as huggingface_hub's validator and the Hub apply them)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.count("/") != 1:
        return f"{name!r} must be exactly 'namespace/name'"
    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        reason = str(exc).splitlines()[0].split(": '")[0].rstrip(".")
        return f"{name!r} is not a valid Hub repo id: {reason}"  # its pattern also caps names at 96 characters
    return None
