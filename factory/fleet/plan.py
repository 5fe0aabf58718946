"""`plan`: for every (recipe, model), does the target hold a build with the current fingerprint?

fresh: it does; stale: it holds an older build, and the card metadata says why (recipe settings,
calibration data, base revision, library versions, evaluation); missing: no repo, or a repo that
holds no factory build. Only recipe files and the targets' metadata are read: no model loads.

`github_base_matrix` lists the base evaluations that planned builds would share through a store
(`publish.base_evals`): one small job per base model, which the rebuild workflow runs before the
build fan-out, so that every build finds the base scores in the store instead of measuring them.
"""

from __future__ import annotations

import json
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from factory.core.hub import RemoteBuild, Target
from factory.fleet.runners import Tier, model_params_b, runner_for, tiers
from factory.pipeline.build import Build
from factory.pipeline.fingerprint import factory_metadata
from factory.recipe import Recipe, load_recipe
from factory.recipe.eval_plan import EvalPlan
from factory.recipe.paths import DEFAULT_PATTERN, recipe_files as expand_recipe_paths
from factory.stages.evaluate.base_store import base_identity, store_has, store_path
from factory.stages.push import resolve_repo_id


@dataclass
class PlanRow:
    recipe: str  # the recipe file, as given (what `factory publish` takes)
    recipe_name: str
    model: str
    repo_id: str
    status: str  # fresh | stale | missing
    reason: str
    fingerprint: str
    remote_fingerprint: str | None
    params_b: float | None = None  # the model's size, billions of parameters (factory.fleet.runners)


def recipe_files(patterns: list[str]) -> list[str]:
    """Recipe files, folders and globs -> files, as `validate` takes them (factory.recipe.paths)."""
    return expand_recipe_paths(patterns, DEFAULT_PATTERN)


def plan(patterns: list[str], target: Target, root: Path, org: str | None = None) -> list[PlanRow]:
    builds = []
    for path in recipe_files(patterns):
        recipe = load_recipe(path)
        for entry in recipe.models:
            build = Build(recipe, entry, root)
            builds.append((path, build, resolve_repo_id(build, target, org)))
    # Metadata reads are small and independent: ask for them side by side.
    remotes = lookups(target, [repo for _, _, repo in builds])
    rows = [compare(path, build, repo, remote) for (path, build, repo), remote in zip(builds, remotes)]
    sizes: dict[tuple[str, str], float | None] = {}
    for row, (_, build, _) in zip(rows, builds):
        key = (row.model, str(build.recipe_dir))
        if key not in sizes:
            sizes[key] = model_params_b(build.entry, build.recipe_dir)
        row.params_b = None if sizes[key] is None else round(sizes[key], 3)
    return rows


def lookups(target: Target, repos: list[str], workers: int = 8) -> list[RemoteBuild | None]:
    """target.lookup of every repo, up to `workers` at once, in daemon threads: Ctrl-C (or the first
    error) returns at once, without waiting for calls still in flight (each has its own timeout,
    factory.core.net), and a hung call never keeps the process from exiting."""
    if not repos:
        return []
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for index, repo in enumerate(repos):
        todo.put((index, repo))
    done: queue.SimpleQueue = queue.SimpleQueue()

    def worker() -> None:
        while True:
            try:
                index, repo = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((index, target.lookup(repo), None))
            except BaseException as exc:  # handed to the main thread, raised there
                done.put((index, None, exc))

    for _ in range(min(workers, len(repos))):
        threading.Thread(target=worker, name="factory-plan-lookup", daemon=True).start()
    results: list[RemoteBuild | None] = [None] * len(repos)
    for _ in repos:
        index, remote, error = _wait_for(done)
        if error is not None:
            raise error
        results[index] = remote
    return results


def _wait_for(results: queue.SimpleQueue, poll_s: float = 0.2):
    """The next result, waiting in short slices: the kernel may deliver SIGINT to a lookup thread (blocked
    in a socket read), and Python runs the handler only when the main thread next runs bytecode, which a
    wait without a timeout never does; so Ctrl-C raises here within poll_s (tests/test_plan.py signals the
    lookup thread itself to show it)."""
    while True:
        try:
            return results.get(timeout=poll_s)
        except queue.Empty:
            continue


def compare(path: str, build: Build, repo: str, remote: RemoteBuild | None) -> PlanRow:
    local = factory_metadata(build)
    row = PlanRow(path, build.recipe.name, build.entry.id, repo, "missing", "", local["fingerprint"], None)
    if remote is None:
        row.reason = "no such repo"
        return row
    if not remote.factory or not remote.factory.get("fingerprint"):
        row.reason = "the repo holds no factory build"
        return row
    theirs = remote.factory
    row.remote_fingerprint = theirs["fingerprint"]
    if theirs["fingerprint"] == local["fingerprint"]:
        row.status = "fresh"
        return row
    row.status = "stale"
    row.reason = "; ".join(stale_reasons(local, theirs)) or "fingerprint differs"
    return row


def stale_reasons(local: dict, theirs: dict) -> list[str]:
    reasons = []
    if theirs.get("settings_digest") != local["settings_digest"]:
        reasons.append("recipe settings changed")
    if theirs.get("calibration_digest") != local["calibration_digest"]:
        reasons.append("calibration data changed")
    if theirs.get("base_revision") != local["base_revision"]:
        reasons.append(f"base revision moved ({_short(theirs.get('base_revision'))} -> {_short(local['base_revision'])})")
    old, new = theirs.get("libraries") or {}, local["libraries"]
    changed = [f"{name} {old.get(name, '?')} -> {new[name]}" for name in sorted(new) if old.get(name) != new[name]]
    if changed:
        reasons.append("library versions changed (" + ", ".join(changed) + ")")
    if not reasons and theirs.get("evaluation_fingerprint") != local["evaluation_fingerprint"]:
        reasons.append("evaluation settings changed")
    return reasons


def _short(revision: str | None) -> str:
    if not revision:
        return "?"
    return revision[:7] if len(revision) == 40 else revision


# ---------------------------------------------------------------- output formats


def to_builds(rows: list[PlanRow], include_fresh: bool = False) -> list[PlanRow]:
    return [r for r in rows if include_fresh or r.status != "fresh"]


def runner_fields(params_b: float | None, available: dict[str, Tier]) -> dict:
    """A matrix entry's runner: the labels its job's `runs-on` takes, the tier's name and the model's size."""
    name, tier = runner_for(params_b, available)
    return {"runner": tier.labels, "runner_tier": name, "params_b": params_b}


def github_matrix(rows: list[PlanRow], include_fresh: bool = False, runner_tiers: dict[str, Tier] | None = None) -> str:
    """The JSON a GitHub Actions `strategy.matrix` takes: one entry per build to (re)build, with the
    runner labels its model's size needs (factory.fleet.runners)."""
    available = runner_tiers if runner_tiers is not None else tiers()
    include = [{"recipe": r.recipe, "model": r.model, "status": r.status, "reason": r.reason,
                **runner_fields(r.params_b, available)} for r in to_builds(rows, include_fresh)]
    return json.dumps({"include": include}, separators=(",", ":"))


def base_jobs(rows: list[PlanRow], include_fresh: bool = False, check_store: bool = True,
              runner_tiers: dict[str, Tier] | None = None) -> list[dict]:
    """One entry per base evaluation that two or more planned builds share through a store and that
    the store does not hold yet: the recipe and model of its first build, the store and the file, and
    the runner its model's size needs."""
    available = runner_tiers if runner_tiers is not None else tiers()

    groups: dict[tuple[str, str], list[PlanRow]] = {}
    recipes: dict[str, Recipe] = {}
    for row in to_builds(rows, include_fresh):
        if row.recipe not in recipes:
            recipes[row.recipe] = load_recipe(row.recipe)
        recipe = recipes[row.recipe]
        store = recipe.publish.base_evals
        if not store:
            continue
        entry = next(e for e in recipe.models if e.id == row.model)
        plan = EvalPlan.for_model(recipe.evaluation, entry.kind)
        identity = base_identity(entry, Build(recipe, entry, Path(".")).recipe_dir, plan)
        groups.setdefault((store, store_path(identity)), []).append(row)
    shared = [(store, path, members) for (store, path), members in groups.items() if len(members) > 1]
    if check_store:  # one metadata read per shared base model (a few): no need to ask side by side
        shared = [(store, path, members) for store, path, members in shared if not store_has(store, path)]
    return [{"recipe": members[0].recipe, "model": members[0].model, "store": store, "file": path,
             "builds": len(members), **runner_fields(members[0].params_b, available)}
            for store, path, members in shared]


def github_base_matrix(rows: list[PlanRow], include_fresh: bool = False,
                       runner_tiers: dict[str, Tier] | None = None) -> str:
    """The JSON of the base jobs' `strategy.matrix` (see `base_jobs`); `{"include": []}` when none."""
    return json.dumps({"include": base_jobs(rows, include_fresh, runner_tiers=runner_tiers)}, separators=(",", ":"))


def as_json(rows: list[PlanRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)


def table(rows: list[PlanRow], markdown: bool = False) -> str:
    head = ("recipe", "model", "repo", "status", "reason")
    body = [(r.recipe_name, r.model, r.repo_id, r.status, r.reason or "-") for r in rows]
    counts = {s: sum(r.status == s for r in rows) for s in ("fresh", "stale", "missing")}
    summary = f"{len(rows)} builds: {counts['fresh']} fresh, {counts['stale']} stale, {counts['missing']} missing"
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
        return "### factory plan\n\n" + "\n".join(lines) + f"\n\n{summary}\n"
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
    return "\n".join(lines) + f"\n{summary}"
