"""`factory` command line: parses, calls one stage, prints. Exit 0 ok, 2 bad input, 1 anything else."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
from pathlib import Path

from factory.core.errors import FactoryError, RecipeInvalid, UserError, first_line


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
    from factory.pipeline import build

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


NETWORK_FREE = ("validate", "schema", "methods")
EXIT_BROKEN_PIPE = 128 + 13  # as if killed by SIGPIPE, what `yes | head` reports


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
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
    from factory.core.errors import Interrupted
    from factory.core.redact import install_log_scrubber, scrub

    def say(line: str) -> None:
        with contextlib.suppress(OSError):
            print(scrub(line), file=sys.stderr, flush=True)

    try:
        check_arguments(args)
        install_log_scrubber()
        if args.command not in NETWORK_FREE:
            from factory.core.net import configure_hub_client

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
    from factory.core.errors import UserError

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

    from factory.core.errors import Interrupted

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


def _parser() -> argparse.ArgumentParser:
    # The global flags work before the subcommand and after it: the subcommand's copy defaults to
    # SUPPRESS, so it never overwrites what the main parser already read.
    top = argparse.ArgumentParser(add_help=False)
    top.add_argument("-v", "--verbose", action="store_true", help="show the engines' own logs")
    top.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show the engines' own logs")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of internal errors")

    parser = argparse.ArgumentParser(prog="factory", parents=[top],
                                     description="Quantize LLaMA-3 and LLaVA-Next models from recipe files.")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("validate", parents=[common], help="check recipe files; one line per problem")
    p.add_argument("paths", nargs="+", help="recipe files, folders of them, or globs (quoted)")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("schema", parents=[common], help="print the recipe JSON Schema")
    p.set_defaults(run=cmd_schema)

    p = sub.add_parser("methods", parents=[common], help="list the methods: bits, output format, runtimes")
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    p.set_defaults(run=cmd_methods)

    p = sub.add_parser("quantize", parents=[common], help="quantize every model of a recipe (or one)")
    p.add_argument("recipe")
    p.add_argument("--model", help="only this model id from the recipe")
    p.add_argument("--workdir", help="root of builds/ (default: $FACTORY_WORKDIR or the current folder)")
    p.set_defaults(run=cmd_quantize)
    p = sub.add_parser("finetune", parents=[common],
                       help="LoRA fine-tune (qlora, ir-qlora) every model of a recipe (or one); resumes a killed run")
    p.add_argument("recipe")
    p.add_argument("--model", help="only this model id from the recipe")
    p.add_argument("--workdir", help="root of builds/ (default: $FACTORY_WORKDIR or the current folder)")
    p.set_defaults(run=cmd_quantize)
    p = sub.add_parser("evaluate", parents=[common], help="score quantized builds against their base model")
    p.add_argument("recipe")
    p.add_argument("--model", help="only this model id from the recipe")
    p.add_argument("--workdir", help="root of builds/ (default: $FACTORY_WORKDIR or the current folder)")
    p.set_defaults(run=cmd_evaluate)
    p = sub.add_parser("evaluate-base", parents=[common],
                       help="only the base model's scores for a recipe's plan: cached, or from the store, or measured")
    p.add_argument("recipe")
    p.add_argument("--model", help="only this model id from the recipe")
    p.add_argument("--workdir", help="root of builds/ (default: $FACTORY_WORKDIR or the current folder)")
    p.set_defaults(run=cmd_evaluate_base)
    p = sub.add_parser("speed", parents=[common],
                       help="speed and memory of each build and its base model in the runtime a user would use")
    p.add_argument("recipe")
    p.add_argument("--model", help="only this model id from the recipe")
    p.add_argument("--workdir", help="root of builds/ (default: $FACTORY_WORKDIR or the current folder)")
    p.set_defaults(run=cmd_speed)

    def target_options(p, writes: bool = True) -> None:
        p.add_argument("--workdir", help="root of builds/ (default: $FACTORY_WORKDIR or the current folder)")
        p.add_argument("--to", metavar="DIR", help="a local folder laid out as <org>/<name>/ instead of the Hub")
        p.add_argument("--org", help="namespace to publish to (default: the recipe's publish.org, else the token's user)")
        if writes:
            p.add_argument("--force", action="store_true",
                           help="publish even if a quality gate failed or the target already holds this fingerprint")

    p = sub.add_parser("card", parents=[common], help="render the model card of each evaluated build")
    p.add_argument("recipe")
    p.add_argument("--model", help="only this model id from the recipe")
    target_options(p, writes=False)
    p.set_defaults(run=cmd_card)

    for name, help_text, run in (
            ("push", "upload finished builds (one commit each), verified", cmd_push),
            ("publish", "quantize, evaluate, card and push every model of a recipe (or one)", cmd_publish)):
        p = sub.add_parser(name, parents=[common], help=help_text)
        p.add_argument("recipe")
        p.add_argument("--model", help="only this model id from the recipe")
        target_options(p)
        p.add_argument("--dry-run", action="store_true", help="write nothing to the target; print what would be uploaded where")
        p.add_argument("--summary", metavar="FILE", help="append a Markdown summary to FILE (e.g. $GITHUB_STEP_SUMMARY)")
        p.set_defaults(run=run)

    p = sub.add_parser("plan", parents=[common], help="fresh / stale / missing for every (recipe, model)")
    p.add_argument("recipes", nargs="*", help="recipe files, folders or globs (default: recipes/*.yaml)")
    p.add_argument("--format", choices=("table", "json", "github-matrix", "github-base-matrix", "markdown"),
                   default="table")
    p.add_argument("--all", action="store_true", help="github-matrix: include fresh builds too (a forced rebuild)")
    target_options(p, writes=False)
    p.set_defaults(run=cmd_plan)

    p = sub.add_parser("report", parents=[common],
                       help="every build of these recipes in the paper's tables, with plots, CSV and JSON")
    p.add_argument("recipes", nargs="*", help="recipe files, folders or globs (default: recipes/*.yaml)")
    p.add_argument("--out", metavar="DIR", help="where the report goes (default: <workdir>/report)")
    p.add_argument("--from-hub", action="store_true",
                   help="read each build back from its published repo (the target: the Hub, or --to) instead of builds/")
    p.add_argument("--push", metavar="ORG/NAME",
                   help="upload the report to this repo on the target (one verified commit) and keep one Collection "
                        "per base model and org of the published builds")
    target_options(p, writes=False)
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("rebuild", parents=[common], help="publish every stale or missing build")
    p.add_argument("recipes", nargs="*", help="recipe files, folders or globs (default: recipes/*.yaml)")
    p.add_argument("--max-builds", type=int, metavar="N", help="build at most N (1 or more) this run")
    target_options(p)
    p.set_defaults(run=cmd_rebuild)
    return parser


def cmd_validate(args) -> int:
    from factory.recipe import load_recipe
    from factory.recipe.paths import recipe_files

    files = recipe_files(args.paths, default=None)  # the same expansion as plan and rebuild
    problems: list[str] = []
    notes: list[str] = []
    for path in files:
        try:
            recipe = load_recipe(path)
        except RecipeInvalid as exc:
            problems.extend(exc.problems)
            continue
        note = simulated_note(recipe)
        if note:
            notes.append(f"note: {path}: {note}")
    if problems:
        raise RecipeInvalid(problems)
    print("\n".join([*notes, f"{len(files)} recipe{'s' if len(files) != 1 else ''} valid"]))
    return 0


def simulated_note(recipe) -> str | None:
    """What validate, quantize and publish say about a method whose output is simulated quantization."""
    from factory.methods import get_method

    if get_method(recipe.method).output_format != "simulated":
        return None
    return (f"{recipe.method} writes simulated quantization: the dequantized weights at full size, "
            "as the paper evaluates it (no memory saving, no packed runtime)")


def cmd_schema(args) -> int:
    from factory.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))
    return 0


def cmd_methods(args) -> int:
    from factory.methods import all_methods

    rows = [m.describe() for m in all_methods()]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(methods_table(rows, markdown=args.format == "markdown"))
    return 0


def methods_table(rows: list[dict], markdown: bool = False) -> str:
    """The README's method table (`factory methods --format markdown`) or the terminal's."""
    head = ("method", "paper", "bits", "output", "runtimes", "calibration", "", "served packed by")
    body = [(r["name"], r["paper_name"] or "-", ", ".join(map(str, r["bits"])), r["output_format"],
             ", ".join(r["runtimes"]) or "none", "yes" if r["needs_calibration"] else "no", r["summary"],
             r["serving"] or "-")
            for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head[:-2] + ("what it does", head[-1])) + " |", "|" + " --- |" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    return _table([head, *body])


def cmd_quantize(args) -> int:
    """`quantize` and `finetune`: the stage that makes each build's artifact."""
    from factory.pipeline.build import Build, workdir_root
    from factory.methods import get_method
    from factory.stages.artifact import build_artifact
    from factory.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    root = workdir_root(args.workdir)
    stage = get_method(recipe.method).stage
    if stage != args.command:
        raise UserError(f"{recipe.name}: method {recipe.method} is built by `factory {stage}`, not `{args.command}`")
    if simulated_note(recipe):
        print(f"note: {simulated_note(recipe)}")
    results = []
    for entry in recipe.model(args.model):
        build = Build(recipe, entry, root)
        print(f"{stage} {recipe.name} / {entry.id} [{build.settings.scheme_label}, fingerprint {build.fingerprint()}]",
              flush=True)
        result = build_artifact(build)
        if result.skipped:
            print(f"  skipped: {result.output} is already built with this fingerprint")
        results.append((entry.id, result))
    print(_summary(results))
    return 0


def cmd_evaluate(args) -> int:
    from factory.pipeline.build import Build, workdir_root
    from factory.stages.evaluate import evaluate
    from factory.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    root = workdir_root(args.workdir)
    failed = False
    for entry in recipe.model(args.model):
        build = Build(recipe, entry, root)
        print(f"evaluate {recipe.name} / {entry.id}", flush=True)
        result = evaluate(build)
        if result.stage.skipped:
            print(f"  skipped: {result.stage.output} is already evaluated with these settings")
        print(score_table(result.scores))
        print(f"  scores: {result.stage.output / 'scores.json'}")
        for line in result.gate_failures:
            print(f"{recipe.name} / {entry.id}: {line}", file=sys.stderr)
        failed |= bool(result.gate_failures)
    return 1 if failed else 0


def cmd_evaluate_base(args) -> int:
    from factory.pipeline.build import Build, workdir_root
    from factory.stages.evaluate import evaluate_base_model
    from factory.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    root = workdir_root(args.workdir)
    for entry in recipe.model(args.model):
        print(f"evaluate-base {recipe.name} / {entry.id}", flush=True)
        figures = evaluate_base_model(Build(recipe, entry, root))
        print(f"  base scores ({figures.source}): {figures.path / 'metrics.json'}")
    return 0


def cmd_speed(args) -> int:
    from factory.stages.speed import SPEED_FILE, speed

    for build in _builds(args):
        print(f"speed {build.recipe.name} / {build.entry.id}", flush=True)
        result = speed(build)
        figures = json.loads((result.output / SPEED_FILE).read_text())
        if result.skipped:
            print(f"  skipped: {result.output} is already measured with these settings")
        rows = [("model", "batch", "prefill tok/s", "decode tok/s", "load s", "weights MB", "peak RSS MB")]
        for who in ("build", "base"):
            f = figures[who]
            for b in f["batches"]:
                rows.append((who, str(b["batch_size"]), _num(b.get("prefill_tokens_per_s"), "{:.1f}"),
                             _num(b.get("decode_tokens_per_s"), "{:.1f}"), _num(f.get("load_s"), "{:.2f}"),
                             _num(f.get("weights_mb"), "{:.1f}"), _num(f.get("peak_rss_mb"), "{:.0f}")))
        print(f"  runtime {figures['runtime']} on {figures['device']}")
        print(_table(rows))
        print(f"  note: {figures['weights_note']}")
        print(f"  figures: {result.output / SPEED_FILE}")
    return 0


def _builds(args):
    """The recipe's builds this command applies to (validated first)."""
    from factory.pipeline.build import Build, workdir_root
    from factory.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    root = workdir_root(args.workdir)
    return [Build(recipe, entry, root) for entry in recipe.model(args.model)]


def cmd_card(args) -> int:
    from factory.stages.card import card
    from factory.core.hub import target_for
    from factory.stages.push import resolve_repo_id

    target = target_for(args.to)
    for build in _builds(args):
        result = card(build, resolve_repo_id(build, target, args.org))
        note = " (unchanged)" if result.skipped else ""
        print(f"card {build.recipe.name} / {build.entry.id}: {result.output / 'README.md'}{note}")
    return 0


def cmd_push(args) -> int:
    from factory.core.hub import target_for
    from factory.stages.push import push, resolve_repo_id

    target = target_for(args.to)
    for build in _builds(args):
        print(f"push {build.recipe.name} / {build.entry.id} -> {target.description}", flush=True)
        pushed = push(build, target, resolve_repo_id(build, target, args.org), dry_run=args.dry_run, force=args.force)
        _append_summary(args.summary, build, pushed)
    return 0


def cmd_publish(args) -> int:
    from factory.core.hub import target_for
    from factory.pipeline.publish import publish

    target = target_for(args.to)
    for build in _builds(args):
        print(f"publish {build.recipe.name} / {build.entry.id} [{build.settings.scheme_label}] -> {target.description}",
              flush=True)
        done = publish(build, target, org=args.org, dry_run=args.dry_run, force=args.force)
        print(score_table(done.evaluated.scores))
        if not args.dry_run:
            print(f"  card: {done.pushed.location}" + ("/README.md" if args.to else ""))
        _append_summary(args.summary, build, done.pushed, done.evaluated.scores)
    return 0


def cmd_plan(args) -> int:
    from factory.fleet import plan as planning
    from factory.pipeline.build import workdir_root
    from factory.core.hub import target_for
    from factory.fleet.runners import tiers

    # the runner tiers ($FACTORY_RUNNER_LABELS) are checked before any recipe is read or the Hub asked
    runner_tiers = tiers() if args.format in ("github-matrix", "github-base-matrix") else None
    rows = planning.plan(args.recipes, target_for(args.to), workdir_root(args.workdir), args.org)
    if args.format == "github-matrix":
        print(planning.github_matrix(rows, include_fresh=args.all, runner_tiers=runner_tiers))
    elif args.format == "github-base-matrix":
        print(planning.github_base_matrix(rows, include_fresh=args.all, runner_tiers=runner_tiers))
    elif args.format == "json":
        print(planning.as_json(rows))
    else:
        print(planning.table(rows, markdown=args.format == "markdown"))
    return 0


def cmd_report(args) -> int:
    from factory.pipeline.build import workdir_root
    from factory.core.hub import target_for
    from factory.fleet.report_publish import check_report_repo, make_report, publish

    if args.out is not None and not args.out.strip():
        raise UserError("--out is empty: give a folder, or leave the option out for <workdir>/report")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: is a file, not a folder")
    if args.push:
        check_report_repo(args.push)  # before anything is read or rendered
    root = workdir_root(args.workdir)
    target = target_for(args.to)
    out = Path(args.out) if args.out else root / "report"
    made = make_report(args.recipes, root, out, target, args.org, from_hub=args.from_hub,
                       log=lambda line: print(line, file=sys.stderr))
    bad = sum(x.bad for x in made.found.left_out)
    missing = len(made.found.left_out) - bad
    left = "".join([f"; {bad} left out as unreadable" if bad else "",
                    f"; {missing} not built yet" if missing else ""]) + (" (see the footer)" if made.found.left_out else "")
    print(f"report: {len(made.found.builds)} builds, {len(made.report.tables)} tables, "
          f"{sum(len(v) for v in made.report.plots.values())} plots -> {out}{left}")
    if args.push:
        publish(made, args.recipes, root, target, args.org, args.push)
    return 0


def cmd_rebuild(args) -> int:
    from factory.fleet import plan as planning
    from factory.pipeline.build import Build, workdir_root
    from factory.core.errors import FactoryError
    from factory.core.hub import target_for
    from factory.pipeline.publish import publish
    from factory.recipe import load_recipe

    target = target_for(args.to)
    if hasattr(target, "require_token"):
        target.require_token()  # one line now, not one failed build per row later
    root = workdir_root(args.workdir)
    rows = planning.plan(args.recipes, target, root, args.org)
    todo = planning.to_builds(rows, include_fresh=args.force)
    print(planning.table(rows))
    if args.max_builds is not None:
        todo = todo[:args.max_builds]  # at least 1 (check_arguments)
    outcomes = []
    for row in todo:
        recipe = load_recipe(row.recipe)
        build = Build(recipe, recipe.model(row.model)[0], root)
        print(f"\nrebuild {row.recipe_name} / {row.model} ({row.status}: {row.reason or 'forced'})", flush=True)
        try:
            done = publish(build, target, org=args.org, force=args.force)
            outcomes.append((row, "published" if not done.pushed.skipped else "already there", ""))
        except FactoryError as exc:  # one failing build does not stop the others
            print(f"  failed: {first_line(exc)}", file=sys.stderr)
            outcomes.append((row, "failed", first_line(exc)))
        except Exception as exc:
            print(f"  failed: {type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
            outcomes.append((row, "failed", f"{type(exc).__name__}: {first_line(exc)}"))
    rows_out = [("recipe", "model", "result", "")] + [(r.recipe_name, r.model, result, why[:100]) for r, result, why in outcomes]
    print("\n" + (_table(rows_out) if outcomes else "nothing to rebuild: every build is fresh"))
    failed = sum(result == "failed" for _, result, _ in outcomes)
    if failed:
        print(f"{failed} of {len(outcomes)} builds failed", file=sys.stderr)
    from factory.fleet.report_publish import refresh_reports

    refresh_reports(args.recipes, root, target, args.org)  # the reports the recipes name, and their Collections
    return 1 if failed else 0


def _append_summary(path: str | None, build, pushed, scores: dict | None = None) -> None:
    """A Markdown section for CI job summaries: the build, where it went, its scores."""
    if not path:
        return
    state = "dry run" if pushed.dry_run else ("already published" if pushed.skipped else "published")
    lines = [f"### {build.recipe.name} / {build.entry.id}", "",
             f"{state}: `{pushed.repo_id}` ({pushed.location}), fingerprint `{pushed.fingerprint}`", ""]
    if scores:
        from factory.stages.card import score_rows

        lines += ["| task | metric | base | quantized | recovery |", "| --- | --- | ---: | ---: | ---: |"]
        lines += [f"| {r['task']} | {r['metric']} | {_num(r['base'])} | {_num(r['quantized'])} | "
                  f"{_num(r['recovery'], '{:.3f}')} |" for r in score_rows(scores)]
        lines += ["", f"mean recovery: {_num(scores.get('mean_recovery'), '{:.3f}')}", ""]
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def score_table(scores: dict) -> str:
    from factory.stages.card import score_rows

    rows = [("task", "metric", "base", "quantized", "recovery")]
    rows += [(r["task"], r["metric"], _num(r["base"]), _num(r["quantized"]), _num(r["recovery"], "{:.3f}"))
             for r in score_rows(scores)]
    mean = scores.get("mean_recovery")
    note = " (smoke evaluation: bundled sets, not benchmark figures)" if scores.get("smoke") else ""
    loaded = scores.get("harness", {}).get("loaded_as")
    loaded = f"\nevaluated as: {loaded}" if loaded else ""
    return _table(rows) + f"\nmean recovery: {_num(mean, '{:.3f}')}{note}{loaded}"


def _num(value, fmt: str = "{:.4g}") -> str:
    return "-" if value is None else fmt.format(value)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _summary(results) -> str:
    rows = [("model", "output", "size", "vs base", "wall time", "peak RSS", "")]
    for model_id, r in results:
        rec = r.record
        ratio = rec.get("compression_ratio")
        rows.append((
            model_id, str(r.output), _mb(rec.get("size_bytes")),
            f"{ratio:.2f}x smaller" if ratio else "-",
            f"{rec.get('wall_time_s', 0):.1f} s", _mb_value(rec.get("peak_rss_mb")),
            "(reused)" if r.skipped else "",
        ))
    return _table(rows)


def _mb(size: int | None) -> str:
    return f"{size / 2**20:.1f} MB" if size else "-"


def _mb_value(mb: float | None) -> str:
    return f"{mb:.0f} MB" if mb else "-"


if __name__ == "__main__":
    sys.exit(main())
