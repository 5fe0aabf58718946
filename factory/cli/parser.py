"""The command surface: one command per stage verb (from the stage registry), `publish`, and the
commands over recipes and fleets (validate, schema, methods, evaluate-base, plan, report, rebuild)."""

from __future__ import annotations

import argparse

from factory.cli import commands
from factory.registry import all_stages

NETWORK_FREE = ("validate", "schema", "methods")
WORKDIR_HELP = "root of builds/ (default: $FACTORY_WORKDIR or the current folder)"


def build_parser() -> argparse.ArgumentParser:
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
    p.set_defaults(run=commands.cmd_validate)

    p = sub.add_parser("schema", parents=[common], help="print the recipe JSON Schema")
    p.set_defaults(run=commands.cmd_schema)

    p = sub.add_parser("methods", parents=[common], help="list the methods: bits, output format, runtimes")
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    p.set_defaults(run=commands.cmd_methods)

    def one_recipe(p) -> None:
        p.add_argument("recipe")
        p.add_argument("--model", help="only this model id from the recipe")

    def target_options(p, writes: bool = True) -> None:
        p.add_argument("--workdir", help=WORKDIR_HELP)
        p.add_argument("--to", metavar="DIR", help="a local folder laid out as <org>/<name>/ instead of the Hub")
        p.add_argument("--org", help="namespace to publish to (default: the recipe's publish.org, else the token's user)")
        if writes:
            p.add_argument("--force", action="store_true",
                           help="publish even if a quality gate failed or the target already holds this fingerprint")

    def write_options(p) -> None:
        p.add_argument("--dry-run", action="store_true", help="write nothing to the target; print what would be uploaded where")
        p.add_argument("--summary", metavar="FILE", help="append a Markdown summary to FILE (e.g. $GITHUB_STEP_SUMMARY)")

    # One command per verb of every registered stage, all run by one handler.
    for stage in all_stages():
        for verb in stage.commands():
            _stage_command(sub, common, verb, stage, one_recipe, target_options, write_options)

    p = sub.add_parser("evaluate-base", parents=[common],
                       help="only the base model's scores for a recipe's plan: cached, or from the store, or measured")
    one_recipe(p)
    p.add_argument("--workdir", help=WORKDIR_HELP)
    p.set_defaults(run=commands.cmd_evaluate_base)

    p = sub.add_parser("publish", parents=[common], help="quantize, evaluate, card and push every model of a recipe (or one)")
    one_recipe(p)
    target_options(p)
    write_options(p)
    p.set_defaults(run=commands.cmd_publish)

    p = sub.add_parser("plan", parents=[common], help="fresh / stale / missing for every (recipe, model)")
    p.add_argument("recipes", nargs="*", help="recipe files, folders or globs (default: recipes/*.yaml)")
    p.add_argument("--format", choices=("table", "json", "github-matrix", "github-base-matrix", "markdown"),
                   default="table")
    p.add_argument("--all", action="store_true", help="github-matrix: include fresh builds too (a forced rebuild)")
    target_options(p, writes=False)
    p.set_defaults(run=commands.cmd_plan)

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
    p.set_defaults(run=commands.cmd_report)

    p = sub.add_parser("rebuild", parents=[common], help="publish every stale or missing build")
    p.add_argument("recipes", nargs="*", help="recipe files, folders or globs (default: recipes/*.yaml)")
    p.add_argument("--max-builds", type=int, metavar="N", help="build at most N (1 or more) this run")
    target_options(p)
    p.set_defaults(run=commands.cmd_rebuild)
    return parser


def _stage_command(sub, common, verb: str, stage, one_recipe, target_options, write_options) -> None:
    p = sub.add_parser(verb, parents=[common], help=stage.help_for(verb))
    one_recipe(p)
    if stage.target_options is None:
        p.add_argument("--workdir", help=WORKDIR_HELP)
    else:
        target_options(p, writes=stage.target_options == "write")
        if stage.target_options == "write":
            write_options(p)
    p.set_defaults(run=commands.cmd_stage, stage=stage)
