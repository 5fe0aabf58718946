#!/usr/bin/env python3
"""The push's overhead: `factory push` of the demo build vs `huggingface_hub.upload_folder` of the same files.

Both sides upload to the test Hub server (tests/hub_server.py, in this process on 127.0.0.1)
through huggingface_hub's LFS path, each run to a new repo so that nothing is skipped, each in
its own process, in alternating order:

  (a) `factory push recipes/demo-smollm2-gptq-4bit.yaml --org bench-a<N>` (lookup, one commit,
      tag, verification of every file's size and hash);
  (b) a plain script: `create_repo` + `upload_folder` of a folder holding exactly the files (a)
      uploads.

The demo build must be quantized, evaluated and carded first (`make demo` does it; or pass
--workdir of another run). Wall time is spawn to exit.

    .venv/bin/python bench/publish_hub.py [--workdir DIR] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
RECIPE = REPO / "recipes" / "demo-smollm2-gptq-4bit.yaml"

from measure import alternating, median, ratio  # noqa: E402

PLAIN = textwrap.dedent("""
    import sys
    from huggingface_hub import HfApi
    folder, repo = sys.argv[1], sys.argv[2]
    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(folder_path=folder, repo_id=repo, commit_message="upload")
""")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=REPO, help="where builds/ of the demo is (default: the repo)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from hub_server import FakeHub

    with tempfile.TemporaryDirectory(prefix="factory-bench-publish-") as scratch, \
            FakeHub(Path(scratch) / "hub") as hub:
        os.environ.update(hub.client_env())  # before huggingface_hub is imported
        from factory.pipeline.build import Build
        from factory.stages.push import upload_files
        from factory.recipe import load_recipe

        recipe = load_recipe(RECIPE)
        build = Build(recipe, recipe.models[0], args.workdir)
        if not (build.dir / "card" / "README.md").is_file():
            sys.exit(f"no carded demo build under {args.workdir}/builds: run `make demo` first "
                     f"(or: factory publish {RECIPE.relative_to(REPO)} --to hub)")
        files = upload_files(build)
        folder = Path(scratch) / "folder"
        for path, local in files.items():  # the same files, laid out as the repo holds them
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, folder / path)
        total = sum(f.stat().st_size for f in files.values())

        env = {**os.environ, **hub.client_env()}
        factory = str(Path(sys.executable).parent / "factory")
        walls: dict[str, list[float]] = {"factory": [], "plain": []}
        for i, side in enumerate(alternating(args.repeats, "factory", "plain")):
            if side == "factory":
                cmd = [factory, "push", str(RECIPE), "--workdir", str(args.workdir), "--org", f"bench-a{i}"]
            else:
                cmd = [sys.executable, "-c", PLAIN, str(folder), f"bench-b{i}/demo"]
            started = time.perf_counter()
            done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
            walls[side].append(time.perf_counter() - started)
            if done.returncode != 0:
                sys.exit(f"{side} failed: {done.stderr[-2000:]}")
            print(f"[{i + 1}] {side}: {walls[side][-1]:.2f} s", flush=True)

    f, b = median(walls["factory"]), median(walls["plain"])
    print(f"\n{len(files)} files, {total / 2**20:.1f} MiB, test Hub server on 127.0.0.1, median of {args.repeats} runs")
    print(f"factory push:   {f:.2f} s")
    print(f"upload_folder:  {b:.2f} s")
    print(f"ratio factory/plain: {ratio(f, b):.3f} (the push's own work: lookup, tag, verification of every file)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
