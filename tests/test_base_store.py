"""The base model is evaluated once per machine (FACTORY_CACHE) and once per fleet (the store on the Hub).

End to end on the tiny Llama: two builds of one model in two fresh workdirs with one FACTORY_CACHE evaluate
the base once; with a store on the test Hub server and two separate caches (FACTORY_CACHE and the Hugging
Face cache, as on two machines) the second job takes the base scores from the store; a tampered store
file is refused with one line. The rest drives `base_store.obtain` with a stand-in measurement.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from conftest import run_factory, write_recipe
from factory.pipeline.build import Build
from factory.pipeline.fingerprint import digest
from factory.recipe import load_recipe
from factory.stages.artifact import quantize
from factory.stages.evaluate import base_store, evaluate
from factory.stages.evaluate.base_store import Refused, check_document, obtain, store_document, store_path
from hub_server import patch_hf_client

EVAL = "evaluation: {suite: smoke, limit: 4, perplexity_seq_len: 64, batch_size: 4}\n"
METRICS = {"metrics": {"mc": {"acc": 0.5}, "demo_ppl": {"perplexity": 12.0}},
           "higher_is_better": {"mc": {"acc": True}, "demo_ppl": {"perplexity": False}}, "dtype": "bfloat16"}


def _recipe(folder: Path, name: str, bits: int, model: Path, store: str | None = None) -> Path:
    publish = f"publish: {{org: tester, base_evals: {store}}}\n" if store else ""
    return write_recipe(folder, f"name: {name}\nmethod: rtn\nweights: {{bits: {bits}, group_size: 32}}\n{EVAL}"
                        f"{publish}models:\n  - {{id: test/tiny, source: local, path: {model}}}\n", f"{name}.yaml")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_llama) -> dict[str, Path]:
    """rtn-4bit and rtn-8bit of the tiny Llama, each quantized (not evaluated) in its own workdir."""
    recipes = tmp_path_factory.mktemp("recipes")
    out = {}
    for name, bits in (("rtn-4bit", 4), ("rtn-8bit", 8)):
        work = tmp_path_factory.mktemp(f"quantized-{name}")
        recipe = load_recipe(_recipe(recipes, name, bits, tiny_llama))
        quantize(Build(recipe, recipe.models[0], work))
        out[name] = work
    return out


def _fresh_workdir(quantized: dict[str, Path], name: str, tmp_path: Path, label: str) -> Path:
    """A copy of a quantized workdir, as a fresh CI job has it after its quantize stage."""
    work = tmp_path / label
    shutil.copytree(quantized[name], work)
    return work


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Switch this process to the caches of one 'machine': FACTORY_CACHE and the Hugging Face cache."""
    from huggingface_hub import constants

    def use(name: str) -> Path:
        root = tmp_path / "machines" / name
        monkeypatch.setenv("FACTORY_CACHE", str(root / "factory"))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root / "hf-hub"))
        return root

    return use


@pytest.fixture
def store_hub(hub, monkeypatch):
    """The session's test Hub server, reachable from this process, with a write token."""
    patch_hf_client(monkeypatch, hub.url)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    return hub


def _evaluate(work: Path, recipe_path: Path) -> tuple[object, list[str]]:
    recipe = load_recipe(recipe_path)
    logs: list[str] = []
    result = evaluate(Build(recipe, recipe.models[0], work), log=logs.append)
    return result, logs


# ---------------------------------------------------------------- end to end


def test_two_workdirs_one_cache_evaluate_the_base_once(quantized, tmp_path, tiny_llama, machine):
    cache = machine("one") / "factory"
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    a, b = (_fresh_workdir(quantized, n, tmp_path, f"job-{n}") for n in ("rtn-4bit", "rtn-8bit"))

    first, logs_a = _evaluate(a, _recipe(recipes, "rtn-4bit", 4, tiny_llama))
    second, logs_b = _evaluate(b, _recipe(recipes, "rtn-8bit", 8, tiny_llama))

    assert (first.base_source, second.base_source) == ("measured", "cache")
    assert sum("evaluating once" in line for line in logs_a + logs_b) == 1
    assert any("reusing its evaluation" in line for line in logs_b)
    (entry,) = (cache / "base-evals" / "test--tiny").iterdir()
    assert json.loads((entry / "identity.json").read_text())["model"] == "test/tiny"
    assert not (a / "base-evals").exists() and not (b / "base-evals").exists()  # the workdir copy is gone
    base = {t: {m: v["base"] for m, v in ms.items()} for t, ms in first.scores["tasks"].items()}
    assert base == {t: {m: v["base"] for m, v in ms.items()} for t, ms in second.scores["tasks"].items()}


def test_store_shares_the_base_scores_between_two_machines(quantized, tmp_path, tiny_llama, machine, store_hub):
    store = "tester/base-evals-e2e"
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    r4, r8 = _recipe(recipes, "rtn-4bit", 4, tiny_llama, store), _recipe(recipes, "rtn-8bit", 8, tiny_llama, store)

    machine("one")
    first, logs_a = _evaluate(_fresh_workdir(quantized, "rtn-4bit", tmp_path, "a"), r4)
    assert first.base_source == "measured"
    assert any(f"not in the store {store} yet" in line for line in logs_a)
    assert any("pushed its scores to the store" in line for line in logs_a)
    (path,) = [p for p in store_hub.repo_files(f"datasets/{store}") if p.endswith(".json")]
    assert path.startswith("test--tiny/")

    two = machine("two")
    second, logs_b = _evaluate(_fresh_workdir(quantized, "rtn-8bit", tmp_path, "b"), r8)
    assert second.base_source == "store", logs_b
    assert not any("evaluating once" in line for line in logs_b)
    (said,) = [line for line in logs_b if "from the store" in line]
    assert f"{store}/{path}" in said and "skipping its evaluation" in said
    (entry,) = (two / "factory" / "base-evals" / "test--tiny").iterdir()
    assert json.loads((entry / "store.json").read_text()) == {"repo": store, "path": path}
    assert first.scores["base_evaluation"] == second.scores["base_evaluation"] == Path(path).stem
    assert [c["message"] for c in store_hub.commits(f"datasets/{store}")][1:] == [
        f"base evaluation of test/tiny ({Path(path).stem})"]  # pushed once

    # Tampered: the same file with one score changed; a third machine refuses it in one line.
    document = json.loads(store_hub.repo_files(f"datasets/{store}")[path])
    document["metrics"]["metrics"]["demo_ppl"]["perplexity"] *= 0.5
    _commit(store_hub, store, path, json.dumps(document))
    machine("three")
    third, logs_c = _evaluate(_fresh_workdir(quantized, "rtn-8bit", tmp_path, "c"), r8)
    refused = [line for line in logs_c if "refused" in line and "left" not in line]
    assert len(refused) == 1 and f"{store}/{path}" in refused[0] and "\n" not in refused[0], logs_c
    assert third.base_source == "measured" and any("evaluating once" in line for line in logs_c)
    assert third.scores["tasks"]["demo_ppl"]["perplexity"]["base"] == \
        second.scores["tasks"]["demo_ppl"]["perplexity"]["base"]  # its own figures, not the tampered ones
    assert json.loads(store_hub.repo_files(f"datasets/{store}")[path]) == document  # left for a human to look at


def _commit(hub, store: str, path: str, text: str) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi

    HfApi(endpoint=hub.url, token=hub.token).create_commit(
        store, [CommitOperationAdd(path, text.encode())], commit_message="tamper", repo_type="dataset")


def test_evaluate_base_command_takes_the_scores_from_the_store(tmp_path, tiny_llama, hub):
    """`factory evaluate-base` (the rebuild workflow's base job) in fresh processes and caches: the first
    measures and pushes, the second finds the file; then offline, the Hugging Face cache serves it."""
    store = "tester/base-evals-cli"
    recipe = _recipe(tmp_path, "rtn-4bit", 4, tiny_llama, store)

    def job(name: str, **extra: str):
        env = {**hub.client_env(), "FACTORY_CACHE": str(tmp_path / name / "factory"),
               "HF_HOME": str(tmp_path / name / "hf"), "HF_HUB_CACHE": str(tmp_path / name / "hf" / "hub"), **extra}
        return run_factory("evaluate-base", str(recipe), "--workdir", str(tmp_path / name / "work"), env=env)

    first = job("one")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "pushed its scores to the store" in first.stdout and "base scores (measured)" in first.stdout
    second = job("two")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "skipping its evaluation" in second.stdout and "base scores (store)" in second.stdout
    assert hub.token not in first.stdout + first.stderr + second.stdout + second.stderr
    shutil.rmtree(tmp_path / "two" / "factory")  # this machine's cache gone; the Hugging Face cache holds the file
    offline = job("two", HF_HUB_OFFLINE="1")
    assert offline.returncode == 0 and "base scores (store)" in offline.stdout, offline.stdout + offline.stderr[-2000:]


# ---------------------------------------------------------------- base_store.obtain, no model


IDENTITY = {"model": "org/m", "revision": "a" * 40, "plan": {"tasks": ["t"], "limit": None}, "libraries": {"torch": "2"},
            "metrics_format": 2}


def _measure(calls: list, delay: float = 0.0):
    def measure(out: Path) -> None:
        calls.append(out)
        time.sleep(delay)
        (out / "metrics.json").write_text(json.dumps(METRICS))
    return measure


def test_two_jobs_on_one_machine_at_once_measure_once(machine):
    machine("one")
    calls: list = []
    results, logs = [], []
    jobs = [threading.Thread(target=lambda: results.append(obtain(IDENTITY, None, _measure(calls, 1.0), logs.append)))
            for _ in range(2)]
    for j in jobs:
        j.start()
        time.sleep(0.2)
    for j in jobs:
        j.join()
    assert len(calls) == 1 and sorted(r.source for r in results) == ["cache", "measured"]
    assert any("another job on this machine is evaluating it; waiting" in line for line in logs)
    assert json.loads((results[0].path / "metrics.json").read_text()) == METRICS
    assert not [p for p in results[0].path.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_a_store_that_cannot_be_reached_is_not_fatal(machine, monkeypatch):
    from huggingface_hub import constants

    machine("one")
    patch_hf_client(monkeypatch, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value_123")
    calls: list = []
    logs: list[str] = []
    result = obtain(IDENTITY, "tester/unreachable", _measure(calls), logs.append)
    assert result.source == "measured" and len(calls) == 1
    (line,) = [line for line in logs if "cannot be reached" in line]
    assert "tester/unreachable" in line and "evaluating it here" in line
    assert any("could not push to the store tester/unreachable" in line for line in logs)
    assert not any("hf_secret_token_value_123" in line for line in logs)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    machine("two")
    logs.clear()
    assert obtain(IDENTITY, "tester/unreachable", _measure(calls), logs.append).source == "measured"
    assert any("cannot be reached (HF_HUB_OFFLINE is set)" in line for line in logs)
    assert any("not pushed to the store tester/unreachable (HF_HUB_OFFLINE is set)" in line for line in logs)


def test_first_push_wins_and_no_token_is_one_line(machine, store_hub, monkeypatch):
    store = "tester/base-evals-unit"
    machine("one")
    calls: list = []
    logs: list[str] = []
    assert obtain(IDENTITY, store, _measure(calls), logs.append).source == "measured"
    held = store_hub.repo_files(f"datasets/{store}")[store_path(IDENTITY)]
    # A second machine that measured too (it missed the file) never replaces the first one's.
    assert base_store.push_store(store, IDENTITY, {**METRICS, "dtype": "float16"}, logs.append) is False
    assert any("is in the store already" in line for line in logs)
    assert store_hub.repo_files(f"datasets/{store}")[store_path(IDENTITY)] == held
    machine("two")
    monkeypatch.delenv("HF_TOKEN")
    other = {**IDENTITY, "revision": "b" * 40}
    logs.clear()
    assert obtain(other, store, _measure(calls), logs.append).source == "measured"
    assert any("not pushed to the store tester/base-evals-unit (no Hugging Face token" in line for line in logs)


@pytest.mark.parametrize("tamper, reason", [
    (lambda d: d["metrics"]["metrics"]["mc"].update(acc=0.9), "its scores hash to"),
    (lambda d: d["identity"].update(revision="c" * 40), "its identity hashes to"),
    (lambda d: d.update(key="0" * 16), "its identity hashes to"),
    (lambda d: d.pop("metrics"), "lacks the identity or the metrics"),
    (lambda d: d.update(format=99), "format 99"),
])
def test_a_store_file_is_checked_against_its_fingerprint(tamper, reason):
    document = json.loads(store_document(IDENTITY, METRICS))
    assert check_document(json.dumps(document), digest(IDENTITY), IDENTITY)["metrics"] == METRICS
    tamper(document)
    with pytest.raises(Refused, match=reason) as exc:
        check_document(json.dumps(document), digest(IDENTITY), IDENTITY)
    assert "\n" not in str(exc.value)
    with pytest.raises(Refused, match="not valid JSON"):
        check_document("{", digest(IDENTITY), IDENTITY)


# ---------------------------------------------------------------- the plan's base jobs


def test_plan_lists_one_base_job_per_shared_base_model(tmp_path, tiny_llama, store_hub):
    """`plan --format github-base-matrix`: one entry per base model that two or more planned builds share
    through a store that does not hold its scores yet; none once the store does."""
    from factory.recipe.eval_plan import EvalPlan
    from factory.stages.evaluate.base_store import base_identity, push_store

    store = "tester/base-evals-plan"
    other = tmp_path / "other-model"
    shutil.copytree(tiny_llama, other)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    paths = [_recipe(recipes, f"rtn-{bits}bit", bits, tiny_llama, store) for bits in (3, 4, 8)]
    single = write_recipe(recipes, f"name: rtn-2bit\nmethod: rtn\nweights: {{bits: 2, group_size: 32}}\n{EVAL}"
                          f"publish: {{org: tester, base_evals: {store}}}\n"
                          f"models:\n  - {{id: test/other, source: local, path: {other}}}\n", "rtn-2bit.yaml")

    def base_matrix() -> list[dict]:
        done = run_factory("plan", str(recipes / "*.yaml"), "--workdir", str(tmp_path), "--format",
                           "github-base-matrix", env=store_hub.client_env())
        assert done.returncode == 0 and len(done.stdout.strip().splitlines()) == 1, done.stderr[-2000:]
        return json.loads(done.stdout)["include"]

    recipe = load_recipe(paths[0])
    entry = recipe.models[0]
    identity = base_identity(entry, recipe.source_path.parent, EvalPlan.for_model(recipe.evaluation, entry.kind))
    [job] = base_matrix()  # test/other: one build, no base job
    assert job == {"recipe": str(paths[0]), "model": "test/tiny", "store": store, "file": store_path(identity),
                   "builds": 3, "runner": ["self-hosted", "linux", "gpu-80gb"], "runner_tier": "gpu-80gb",
                   "params_b": job["params_b"]}  # the base job runs where its model's builds run
    assert job["params_b"] < 0.01
    assert str(single) not in json.dumps(base_matrix())
    assert push_store(store, identity, METRICS, print) is True
    assert base_matrix() == []


def test_recipe_names_the_store_as_a_hub_repo_id(tmp_path, tiny_llama):
    from factory.core.errors import RecipeInvalid

    good = load_recipe(_recipe(tmp_path, "rtn-4bit", 4, tiny_llama, "my-org/factory-base-evals"))
    assert good.publish.base_evals == "my-org/factory-base-evals"
    (tmp_path / "plain").mkdir()
    plain = load_recipe(_recipe(tmp_path / "plain", "rtn-4bit", 4, tiny_llama))
    assert plain.publish.base_evals is None
    # the store is where scores are kept, not what they are: no part of any fingerprint
    from factory.pipeline.fingerprint import publish_fingerprint
    assert publish_fingerprint(Build(good, good.models[0], tmp_path)) == \
        publish_fingerprint(Build(plain, plain.models[0], tmp_path))
    bad = _recipe(tmp_path, "rtn-2bit", 2, tiny_llama, "not--valid/x")
    with pytest.raises(RecipeInvalid) as exc:
        load_recipe(bad)
    (line,) = exc.value.problems
    assert line.startswith(f"{bad}:") and ": publish.base_evals: 'not--valid/x' is not a valid Hub repo id" in line
