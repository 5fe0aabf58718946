"""`factory report`: read the builds (factory.fleet.report_sources), render the report in full (its tables:
factory.fleet.report; its files: factory.fleet.report_files), and with `--push ORG/NAME` upload it as one
verified commit, as `push` does for a build.

The push is idempotent: the report's README carries a digest of every file (`factory.pipeline.fingerprint` in its
front matter), and a target that already holds that digest is left alone. A repo that holds anything but a
factory report is refused, so a report never overwrites a build.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from factory.core.collection_title import check_title, title_for
from factory.core.errors import FactoryError, UserError
from factory.core.hub_files import card_metadata, verify
from factory.engines.base_models import slug
from factory.fleet.hub_collections import sync_all
from factory.fleet.plan import recipe_files
from factory.fleet.report import Report, build_report
from factory.fleet.report_files import README, write
from factory.fleet.report_sources import Found, from_target, local
from factory.recipe import hub_repo_id_problem, load_recipe


@dataclass
class Made:
    report: Report
    found: Found
    files: dict[str, Path]
    out: Path


@dataclass
class ReportPush:
    repo_id: str
    fingerprint: str
    skipped: bool
    location: str
    commit: str | None = None


def make_report(recipes: list[str], root: Path, out: Path, target=None, org: str | None = None,
                from_hub: bool = False, log=print) -> Made:
    found = from_target(recipes, root, target, org) if from_hub else local(recipes, root, target, org)
    for line in found.warnings:
        log(line)
    report = build_report(found.builds, found.left_out)
    title = "factory report: " + ", ".join(sorted({b.model for b in found.builds})) if found.builds else None
    files = write(report, out, title or "factory report")
    return Made(report, found, files, out)


def report_fingerprint(files: dict[str, Path]) -> str:
    block = card_metadata(files[README].read_text(encoding="utf-8")).get("factory") or {}
    return block["fingerprint"]


def check_report_repo(repo: str) -> None:
    problem = hub_repo_id_problem(repo)
    if problem or "/" not in repo:
        raise UserError(f"--push {repo}: {problem or 'must be ORG/NAME'}")


def publish(made: Made, recipes: list[str], root: Path, target, org: str | None, repo: str, log=print) -> ReportPush:
    """`--push`: the report commit, then the Collections of the published builds. Everything that can be
    refused without writing (the repo id, the titles) is checked before either is written."""
    check_report_repo(repo)
    published = from_target(recipes, root, target, org)  # small reads: what the Collections will hold
    for model in sorted({b.model for b in published.builds}):
        check_title(title_for(model))
    pushed = push_report(made.files, target, repo, log=log)
    sync_all(target, published.builds, repo, log=log)
    return pushed


def push_report(files: dict[str, Path], target, repo: str, log=print) -> ReportPush:
    check_report_repo(repo)
    if hasattr(target, "require_token"):
        target.require_token()
    fingerprint = report_fingerprint(files)
    with target.lock(repo):
        current = target.lookup(repo)
        if current is not None and not (current.factory or {}).get("report"):
            raise UserError(f"--push {repo}: {target.description} holds a repo there that is not a factory report "
                            "(a build, or someone else's); choose another name")
        if current is not None and current.factory.get("fingerprint") == fingerprint:
            log(f"  report unchanged: {target.description} already holds {repo} at {fingerprint}; nothing pushed")
            return ReportPush(repo, fingerprint, True, target.location(repo), current.commit)
        tag = f"factory-report-{fingerprint}"
        pushed = target.publish(repo, files, f"factory: report ({len(files)} files, fingerprint {fingerprint})",
                                "The factory's report over every build of its recipes (factory report --push).",
                                tag, False, head=current.commit if current else None)
        problems = verify(target, repo, pushed.commit, files, pushed.sha256)
        if problems:
            raise FactoryError(f"{repo}: the published report does not match the rendered one: {problems[0]}"
                               + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    log(f"  pushed the report ({len(files)} files) to {pushed.url}"
        + (f" (commit {pushed.commit[:12]})" if pushed.commit else "") + "; verified names, sizes and hashes")
    return ReportPush(repo, fingerprint, False, pushed.url, pushed.commit)


def reports_of(recipes: list[str]) -> dict[str, list[str]]:
    """{report repo: the recipe files that name it (publish.report)}."""
    out: dict[str, list[str]] = {}
    for path in recipe_files(recipes):
        report = load_recipe(path).publish.report
        if report:
            out.setdefault(report, []).append(path)
    return out


def refresh_reports(recipes: list[str], root: Path, target, org: str | None, log=print) -> list[ReportPush]:
    """`factory rebuild`, after its builds: each report the recipes name, read back from the target and pushed
    (unchanged: nothing written), and the Collections brought up to date."""
    done = []
    for repo, paths in sorted(reports_of(recipes).items()):
        log(f"\nreport {repo} ({len(paths)} recipes)")
        made = make_report(paths, root, root / "report" / slug(repo), target, org, from_hub=True, log=log)
        done.append(publish(made, paths, root, target, org, repo, log=log))
    return done
