"""The commands: one generic handler runs any stage verb over a recipe's builds; the rest read recipes
(validate, schema, methods) or work over fleets of builds (plan, report, rebuild)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from factory.core.errors import FactoryError, RecipeInvalid, UserError, first_line
from factory.core.hub import target_for
from factory.core.tables import num, text_table
from factory.fleet import plan as planning
from factory.fleet.report_publish import check_report_repo, make_report, publish as publish_report, refresh_reports
from factory.fleet.runners import tiers
from factory.pipeline.build import Build, workdir_root
from factory.pipeline.publish import publish
from factory.pipeline.stage import Options, run
from factory.recipe import load_recipe, recipe_json_schema
from factory.recipe.paths import recipe_files
from factory.registry import all_methods, get_method
from factory.stages.card import score_rows, score_table
from factory.stages.evaluate import evaluate_base_model


def cmd_stage(args) -> int:
    """Any stage verb (quantize, finetune, evaluate, speed, card, push): the stage over each build of the recipe."""
    stage = args.stage
    target = target_for(args.to) if stage.target_options else None
    options = Options(target=target, org=getattr(args, "org", None), dry_run=getattr(args, "dry_run", False),
                      force=getattr(args, "force", False), verb=args.command)
    recipe = load_recipe(args.recipe)
    root = workdir_root(args.workdir)
    for line in stage.before(recipe, options):
        print(line)
    results = []
    for entry in recipe.model(args.model):
        build = Build(recipe, entry, root)
        stage.preflight(build, options)
        header = stage.header(build, options)
        if header:
            print(header, flush=True)
        result = run(stage, build, options)
        for line in stage.lines(build, result, options):
            print(line)
        for line in stage.warnings(build, result):
            print(line, file=sys.stderr)
        if getattr(args, "summary", None):
            _append_summary(args.summary, build, result)
        results.append((build, result))
    for line in stage.after(results):
        print(line)
    return stage.exit_code(results)


def cmd_publish(args) -> int:
    target = target_for(args.to)
    recipe = load_recipe(args.recipe)
    root = workdir_root(args.workdir)
    for entry in recipe.model(args.model):
        build = Build(recipe, entry, root)
        print(f"publish {build.recipe.name} / {build.entry.id} [{build.settings.scheme_label}] -> {target.description}",
              flush=True)
        done = publish(build, target, org=args.org, dry_run=args.dry_run, force=args.force)
        print(score_table(done.evaluated.scores))
        if not args.dry_run:
            print(f"  card: {done.pushed.location}" + ("/README.md" if args.to else ""))
        _append_summary(args.summary, build, done.pushed, done.evaluated.scores)
    return 0


def cmd_validate(args) -> int:
    files = recipe_files(args.paths, default=None)  # the same expansion as plan and rebuild
    problems: list[str] = []
    notes: list[str] = []
    for path in files:
        try:
            recipe = load_recipe(path)
        except RecipeInvalid as exc:
            problems.extend(exc.problems)
            continue
        note = get_method(recipe.method).console_note()
        if note:
            notes.append(f"note: {path}: {note}")
    if problems:
        raise RecipeInvalid(problems)
    print("\n".join([*notes, f"{len(files)} recipe{'s' if len(files) != 1 else ''} valid"]))
    return 0


def cmd_schema(args) -> int:
    print(json.dumps(recipe_json_schema(), indent=2))
    return 0


def cmd_methods(args) -> int:
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
    return text_table([head, *body])


def cmd_evaluate_base(args) -> int:
    recipe = load_recipe(args.recipe)
    root = workdir_root(args.workdir)
    for entry in recipe.model(args.model):
        print(f"evaluate-base {recipe.name} / {entry.id}", flush=True)
        figures = evaluate_base_model(Build(recipe, entry, root))
        print(f"  base scores ({figures.source}): {figures.path / 'metrics.json'}")
    return 0


def cmd_plan(args) -> int:
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
        publish_report(made, args.recipes, root, target, args.org, args.push)
    return 0


def cmd_rebuild(args) -> int:
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
    print("\n" + (text_table(rows_out) if outcomes else "nothing to rebuild: every build is fresh"))
    failed = sum(result == "failed" for _, result, _ in outcomes)
    if failed:
        print(f"{failed} of {len(outcomes)} builds failed", file=sys.stderr)
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
        lines += ["| task | metric | base | quantized | recovery |", "| --- | --- | ---: | ---: | ---: |"]
        lines += [f"| {r['task']} | {r['metric']} | {num(r['base'])} | {num(r['quantized'])} | "
                  f"{num(r['recovery'], '{:.3f}')} |" for r in score_rows(scores)]
        lines += ["", f"mean recovery: {num(scores.get('mean_recovery'), '{:.3f}')}", ""]
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
