"""`factory` command line: parses, calls one stage, prints. Exit 0 ok, 2 bad input, 1 anything else.

factory.cli.parser builds the commands (one per stage verb, from the stage registry, and the fleet
commands); factory.cli.commands runs them. This module is the process around them: the global flags,
signals, and one line for every error.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from pathlib import Path

from factory.cli.parser import NETWORK_FREE as NETWORK_FREE, build_parser  # commands that read recipes only
from factory.core.errors import FactoryError, Interrupted, RecipeInvalid, UserError, first_line
from factory.core.net import configure_hub_client
from factory.core.redact import install_log_scrubber, scrub
from factory.pipeline import build

# What an interrupted command leaves behind, in its own words (Ctrl-C, SIGTERM or SIGHUP).
READ_ONLY = ("validate", "schema", "methods", "plan")
_PUSH = ("the push was cut off: a local folder holds its previous copy or the complete new one, a Hub repo its "
         "previous commit unless the new commit was already made; run again to finish")


def interrupted_message(command: str) -> str:
    if command in READ_ONLY:
        return "nothing was written" + (" (plan only reads)" if command == "plan" else "")
    if command == "push":
        return _PUSH
    if command == "report":  # the report folder is swapped in whole; the push is one commit (as push's)
        return "the report folder holds its previous copy or the complete new one; " + _PUSH.replace(
            "the push was cut off", "a push that was cut off") + "; a Collection update that was cut off is finished " \
            "by the next run"
    if build.interrupted_stage:
        said = (f"{build.interrupted_stage} was stopped and discarded (not marked done); finished stages are "
                "kept and the next run resumes there")
    else:
        said = "no stage was running, so none was discarded; finished stages are kept"
    if command == "publish":
        said += "; a push that was cut off left the target's previous copy (or, on the Hub, the new commit if " \
                "it was already made)"
    if command == "rebuild":
        said += "; builds not started yet were not run"
    return said


EXIT_BROKEN_PIPE = 128 + 13  # as if killed by SIGPIPE, what `yes | head` reports


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    # llm-compressor logs every module it touches (INFO) and its metrics (level 38); keep the
    # console to progress bars and the summary unless asked.
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "INFO" if args.verbose else "ERROR")
    os.environ.setdefault("LOGURU_LEVEL", "INFO" if args.verbose else "WARNING")  # lmms-eval's task scan logs DEBUG
    restore = _terminate_like_interrupt()
    try:
        return _run(args)
    except BrokenPipeError:  # `factory schema | head`: the reader left; stop quietly
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    finally:
        restore()


def _run(args) -> int:
    def say(line: str) -> None:
        with contextlib.suppress(OSError):
            print(scrub(line), file=sys.stderr, flush=True)

    try:
        check_arguments(args)
        install_log_scrubber()
        if args.command not in NETWORK_FREE:
            configure_hub_client()  # a timeout and bounded retries on every Hub call
        return args.run(args)
    except RecipeInvalid as exc:
        for problem in exc.problems:
            say(problem)
        return exc.exit_code
    except FactoryError as exc:
        say(f"error: {exc}")
        return exc.exit_code
    except BrokenPipeError:
        raise
    except KeyboardInterrupt as exc:
        how = f"terminated ({exc.name})" if isinstance(exc, Interrupted) else "interrupted (Ctrl-C)"
        say(f"{how}: {interrupted_message(args.command)}")
        code = exc.exit_code if isinstance(exc, Interrupted) else 130
        _exit_now_if_threads_hang(code)
        return code
    except OSError as exc:
        if args.debug:
            raise
        if exc.errno == errno.ENOSPC:
            say("error: no space left on device; the unfinished stage was discarded")
        else:
            say(f"error: {first_line(exc)}")
        return 1
    except Exception as exc:  # an internal failure: one line here, the traceback in the manifest
        if args.debug:
            raise
        say(f"error: {type(exc).__name__}: {first_line(exc)} (run with --debug for the traceback)")
        return 1


def check_arguments(args) -> None:
    """Empty or impossible option values are bad input (one line, exit 2), never a default in disguise."""
    for option in ("to", "workdir", "org", "model", "summary"):
        value = getattr(args, option, None)
        if value is not None and not value.strip():
            raise UserError(f"--{option} is empty: give a value, or leave the option out")
    for option, what in (("to", "--to"), ("workdir", "--workdir")):
        value = getattr(args, option, None)
        if value and Path(value).exists() and not Path(value).is_dir():
            raise UserError(f"{what} {value}: is a file, not a folder")
    summary = getattr(args, "summary", None)
    if summary and Path(summary).is_dir():
        raise UserError(f"--summary {summary}: is a folder, not a file")
    max_builds = getattr(args, "max_builds", None)
    if max_builds is not None and max_builds < 1:
        raise UserError(f"--max-builds {max_builds}: must be at least 1 (leave it out to build every stale or "
                        "missing build)")


def _terminate_like_interrupt():
    """SIGTERM and SIGHUP raise like Ctrl-C does, so that the same cleanup runs (partial folders
    removed, stages marked failed); the exit code is 128 + the signal. Returns the undo."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise Interrupted(signum, signal.Signals(signum).name)

    previous = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            with contextlib.suppress(ValueError, OSError):
                previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, old)

    return restore


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so that the exit flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _exit_now_if_threads_hang(code: int) -> None:
    """An interrupt ends the command at once: threads still waiting on the network (a library's
    upload pool) must not hold the exit back. Only in the real CLI process (not under pytest)."""
    import threading

    if "pytest" in sys.modules:
        return
    waiting = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if waiting:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _parser() -> argparse.ArgumentParser:  # the name the tests know
    return build_parser()


if __name__ == "__main__":
    sys.exit(main())
