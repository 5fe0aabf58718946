"""`factory` command line: parses, calls one stage, prints. Exit 0 ok, 2 bad input, 1 anything else."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from factory.errors import FactoryError, RecipeInvalid


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
    try:
        return args.run(args)
    except RecipeInvalid as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return exc.exit_code
    except FactoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: unfinished stages were discarded and will run again", file=sys.stderr)
        return 130
    except OSError as exc:
        if args.debug:
            raise
        if exc.errno == errno.ENOSPC:
            print("error: no space left on device; the unfinished stage was discarded", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # an internal failure: one line here, the traceback in the manifest
        if args.debug:
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="show the engines' own logs")
    common.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")

    parser = argparse.ArgumentParser(prog="factory", parents=[common],
                                     description="Quantize LLaMA-3 and LLaVA-Next models from recipe files.")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("validate", parents=[common], help="check recipe files; one line per problem")
    p.add_argument("paths", nargs="+", help="recipe files or folders of them")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("schema", parents=[common], help="print the recipe JSON Schema")
    p.set_defaults(run=cmd_schema)

    p = sub.add_parser("quantize", parents=[common], help="quantize every model of a recipe (or one)")
    p.add_argument("recipe")
    p.add_argument("--model", help="only this model id from the recipe")
    p.add_argument("--workdir", help="root of builds/ (default: $FACTORY_WORKDIR or the current folder)")
    p.set_defaults(run=cmd_quantize)
    p = sub.add_parser("evaluate", parents=[common], help="score quantized builds against their base model")
    p.add_argument("recipe")
    p.add_argument("--model", help="only this model id from the recipe")
    p.add_argument("--workdir", help="root of builds/ (default: $FACTORY_WORKDIR or the current folder)")
    p.set_defaults(run=cmd_evaluate)
    return parser


def cmd_validate(args) -> int:
    from factory.recipe import load_recipe

    files: list[Path] = []
    for raw in args.paths:
        path = Path(raw)
        files.extend(sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path])
    problems: list[str] = []
    for path in files:
        try:
            load_recipe(path)
        except RecipeInvalid as exc:
            problems.extend(exc.problems)
    if problems:
        raise RecipeInvalid(problems)
    print(f"{len(files)} recipe{'s' if len(files) != 1 else ''} valid")
    return 0


def cmd_schema(args) -> int:
    from factory.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))
    return 0


def cmd_quantize(args) -> int:
    from factory.build import Build, workdir_root
    from factory.quantize import quantize
    from factory.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    root = workdir_root(args.workdir)
    results = []
    for entry in recipe.model(args.model):
        build = Build(recipe, entry, root)
        print(f"quantize {recipe.name} / {entry.id} [{build.settings.scheme_label}, fingerprint {build.fingerprint()}]",
              flush=True)
        result = quantize(build)
        if result.skipped:
            print(f"  skipped: {result.output} is already built with this fingerprint")
        results.append((entry.id, result))
    print(_summary(results))
    return 0


def cmd_evaluate(args) -> int:
    from factory.build import Build, workdir_root
    from factory.evaluate import evaluate
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


def score_table(scores: dict) -> str:
    rows = [("task", "metric", "base", "quantized", "recovery")]
    for task, metrics in sorted(scores["tasks"].items()):
        for metric, row in metrics.items():
            if row["primary"]:
                rows.append((task, metric, _num(row["base"]), _num(row["quantized"]), _num(row["recovery"], "{:.3f}")))
    mean = scores.get("mean_recovery")
    note = " (smoke evaluation: bundled sets, not benchmark figures)" if scores.get("smoke") else ""
    return _table(rows) + f"\nmean recovery: {_num(mean, '{:.3f}')}{note}"


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
