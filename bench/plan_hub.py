#!/usr/bin/env python3
"""`factory plan` over every shipped recipe against the test Hub server, with everything fresh.

The server (tests/hub_server.py) runs in this process on 127.0.0.1. It is filled with what a
full publish would leave there: the three base models (so `main` resolves to a commit) and, for
every (recipe, model), a repo whose card carries the current fingerprint. Then `factory plan`
runs as a user runs it (its own process, console script) and its wall time is measured.

    .venv/bin/python bench/plan_hub.py [--repeats N]

Target: under 3 s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
TARGET_S = 3.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    from hub_server import FakeHub  # stdlib + PyYAML: no huggingface_hub import yet

    with tempfile.TemporaryDirectory(prefix="factory-bench-plan-") as scratch, FakeHub(Path(scratch) / "hub") as hub:
        # huggingface_hub reads these at import: set them before anything imports it.
        os.environ.update(hub.client_env())
        count = fill(hub, Path(scratch))
        env = {**os.environ, **hub.client_env()}
        factory = str(Path(sys.executable).parent / "factory")
        walls = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            done = subprocess.run([factory, "plan", "--format", "json"], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=120)
            walls.append(time.perf_counter() - started)
            if done.returncode != 0:
                sys.exit(f"factory plan failed: {done.stderr[-2000:]}")
            rows = json.loads(done.stdout)
            stale = [r for r in rows if r["status"] != "fresh"]
            if len(rows) != count or stale:
                sys.exit(f"expected {count} fresh builds, got {len(rows)} rows, not fresh: {stale[:3]}")
        requests = len(hub.requests)

    walls.sort()
    median = walls[len(walls) // 2]
    print(f"factory plan, {count} (recipe, model) builds of {len(list((REPO / 'recipes').glob('*.yaml')))} "
          f"shipped recipes, all fresh, test Hub server on 127.0.0.1, {os.cpu_count()} CPUs")
    print(f"wall time: median {median:.2f} s, min {walls[0]:.2f} s, max {walls[-1]:.2f} s over {len(walls)} runs "
          f"(target < {TARGET_S:.0f} s: {'PASS' if median < TARGET_S else 'MISS'})")
    print(f"server requests in total (setup and every run): {requests}")
    return 0 if median < TARGET_S else 1


def fill(hub, scratch: Path) -> int:
    """Base models and one fresh published card per (recipe, model); returns the number of builds."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from factory.fleet import plan as planning
    from factory.pipeline.build import Build
    from factory.pipeline.fingerprint import factory_metadata
    from factory.core.hub import Hub
    from factory.stages.push import resolve_repo_id
    from factory.recipe import load_recipe

    api = HfApi(endpoint=hub.url, token=hub.token)
    recipes = [load_recipe(path) for path in planning.recipe_files([str(REPO / "recipes" / "*.yaml")])]
    for model_id in sorted({e.id for r in recipes for e in r.models if e.source == "hub"}):
        api.create_repo(model_id, exist_ok=True)
        api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=model_id)
    target = Hub()
    count = 0
    for recipe in recipes:
        for entry in recipe.models:
            build = Build(recipe, entry, scratch)
            repo = resolve_repo_id(build, target, None)
            card = "---\n" + json.dumps({"base_model": entry.id, "factory": factory_metadata(build)}) + "\n---\n"
            api.create_repo(repo, exist_ok=True)
            api.create_commit(repo, [CommitOperationAdd("README.md", card.encode())], commit_message="card")
            count += 1
    return count


if __name__ == "__main__":
    sys.exit(main())
