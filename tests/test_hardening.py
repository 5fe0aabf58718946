"""Issue 13 (hardening): identifiers as paths, strict recipes, arguments, timeouts, secrets, signals, locks, paths.

Two tiny servers live here: `Silent` accepts connections and never answers; `Echo` answers every request
with HTTP 500 and the request's headers (Authorization included) in its body.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO, run_factory, write_recipe
from factory.cli import _parser, main
from factory.core.errors import RecipeInvalid, UserError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SECRET = "sekrit-0123456789-token"  # not hf_-shaped: only the exact-value scrub can catch it


def hub_recipe(directory: Path, name: str = "hub-rtn", extra: str = "", model: str = "test/tiny",
               revision: str = COMMIT) -> Path:
    """A recipe over a Hub model pinned to a commit: plan needs the network only for the target."""
    return write_recipe(directory, f"""
        name: {name}
        method: rtn
        weights: {{bits: 4, group_size: 32}}
        publish: {{org: tester}}
        {extra}
        models: [{{id: "{model}", revision: "{revision}"}}]
    """, f"{name}.yaml")


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------- the two tiny servers


class Silent:
    """Accepts TCP connections and never answers (a hung Hub)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.accepted: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read from or written to

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


class Echo:
    """HTTP 500 for every request, the request's headers echoed in the error body (as some proxies do)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                echoed = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
                body = json.dumps({"error": f"internal error handling {self.command} {self.path} ({echoed})"}).encode()
                self.send_response(500)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def silent():
    server = Silent()
    yield server
    server.close()


@pytest.fixture
def echo():
    server = Echo()
    yield server
    server.close()


def online(url: str, **extra) -> dict:
    return {"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", **extra}


# ---------------------------------------------------------------- 3. identifiers never become unchecked paths


@pytest.mark.parametrize("revision", ["../../../../etc/passwd", "a/../../b", "-rf", "x//y", "a.lock", "feat/.x",
                                      "@{u}", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b", "/abs", "refs/",
                                      "v1.", "@", "tab\there"])
def test_revision_must_be_a_git_ref_or_commit(tmp_path, revision):
    with pytest.raises(RecipeInvalid) as exc:
        from factory.recipe import load_recipe
        load_recipe(hub_recipe(tmp_path, revision=revision.replace("\\", "\\\\").replace("\t", "\\t")))
    assert len(exc.value.problems) == 1 and ": models[0].revision: " in exc.value.problems[0]


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/1", "release-2024.05", COMMIT])
def test_good_revisions_pass(tmp_path, revision):
    from factory.recipe import load_recipe

    assert load_recipe(hub_recipe(tmp_path, revision=revision)).models[0].revision == revision


def test_revision_outside_the_cache_is_never_read(tmp_path):
    """The attack of the issue: HF_HUB_CACHE/models--x/refs/<revision> pointing at a file elsewhere."""
    secret = tmp_path / "secret"
    secret.write_text("f" * 40)  # looks like a commit: it would become the fingerprint's base revision
    cache = tmp_path / "hf-cache"
    (cache / "models--test--tiny" / "refs").mkdir(parents=True)
    recipe = hub_recipe(tmp_path, revision="../../../secret")
    done = run_factory("plan", str(recipe), "--to", str(tmp_path / "hub"), "--format", "json",
                       env={"HF_HUB_CACHE": str(cache)})
    assert done.returncode == 2, done.stderr
    assert lines(done.stderr) == [f"{recipe}:6: models[0].revision: '../../../secret' is not a branch, tag or 40-hex "
                                  "commit: must not contain '//', '..' or '@{'"]
    assert "f" * 40 not in done.stdout + done.stderr

    from factory.engines.base_models import resolve_hub_revision  # the library refuses too, before building the path
    with pytest.raises(UserError, match="revision"):
        resolve_hub_revision("test/tiny", "../../../secret")


@pytest.mark.parametrize("model_id", ["../x", "a/..", "a/b/c", "..", ".", "a//b", "é/x", "a/b\x00", "/abs", ""])
def test_slug_and_local_folder_refuse_unsafe_ids(tmp_path, model_id):
    from factory.core.hub import LocalFolder
    from factory.engines.base_models import slug

    with pytest.raises(UserError):
        slug(model_id)
    with pytest.raises(UserError):
        LocalFolder(tmp_path).location(model_id)
    assert slug("meta-llama/Meta-Llama-3-8B") == "meta-llama--Meta-Llama-3-8B"
    assert LocalFolder(tmp_path).location("org/name") == str(tmp_path / "org" / "name")


def test_safepath_inside_refuses_escapes(tmp_path):
    from factory.core.safepath import inside

    assert inside(tmp_path, "a", "b") == tmp_path / "a" / "b"
    (tmp_path / "link").symlink_to("/")
    for parts in (("..", "x"), ("/etc",), ("link", "etc"), ("a", "..", "..", "x")):
        with pytest.raises(UserError):
            inside(tmp_path, *parts)


# ---------------------------------------------------------------- 4. model ids, strict types, bounds


@pytest.mark.parametrize("model_id, message", [
    ("a/b/c", "'a/b/c' is not a valid Hub model id: it must be 'org/name' (one '/')"),
    ("\u00e9quipe/mod\u00e8le", "is not a valid Hub model id: only ASCII letters, digits, '-', '_' and '.'"),
    ("org/na--me", "is not a valid Hub model id: Cannot have -- or .. in repo_id"),
])
def test_malformed_hub_ids_are_file_line_problems(tmp_path, capsys, model_id, message):
    recipe = hub_recipe(tmp_path, model=model_id)
    assert main(["validate", str(recipe)]) == 2
    err = lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"{recipe}:6: models[0].id: ") and message in err[0], err


@pytest.mark.parametrize("extra, line", [
    ('calibration: {samples: "128"}', "calibration.samples: must be an integer, not the string '128'"),
    ("calibration: {samples: 1e26}", "calibration.samples: must be an integer, not the string '1e26'"),
    ("calibration: {samples: 100000000000000000000}", "calibration.samples: must be less than or equal to 100000"),
    ("calibration: {seq_len: 1000000}", "calibration.seq_len: must be less than or equal to 131072"),
    ("calibration: {seed: -1}", "calibration.seed: must be greater than or equal to 0"),
    ("evaluation: {batch_size: 100000}", "evaluation.batch_size: must be from 1 to 4096 (or 'auto')"),
    ('evaluation: {batch_size: "8"}', "evaluation.batch_size"),
    ("evaluation: {limit: 100000000000}", "evaluation.limit: must be less than or equal to 10000000"),
    ("evaluation: {perplexity_seq_len: 10000000}", "evaluation.perplexity_seq_len: must be less than or equal to"),
    ("evaluation: {num_fewshot: 1000}", "evaluation.num_fewshot: must be less than or equal to 100"),
    ("evaluation: {gates: {min_recovery: .nan}}", "evaluation.gates.min_recovery: must be a finite number"),
    ("evaluation: {gates: {max_ppl_ratio: 1e300}}", "evaluation.gates.max_ppl_ratio"),
    ('evaluation: {gates: {min_recovery: "0.9"}}', "evaluation.gates.min_recovery: must be a number, not the string"),
    ("publish: {org: tester, private: 1}", "publish.private: must be true or false, not the integer 1"),
])
def test_strict_types_and_bounded_counts(tmp_path, capsys, extra, line):
    recipe = hub_recipe(tmp_path, extra=extra.replace("publish: {org: tester, private: 1}", ""))
    if "private" in extra:
        recipe.write_text(recipe.read_text().replace("publish: {org: tester}", extra))
    assert main(["validate", str(recipe)]) == 2
    err = lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"{recipe}:") and line in err[0], err


def test_quoted_bits_is_an_error_not_a_number(tmp_path, capsys):
    recipe = hub_recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace("bits: 4", 'bits: "4"'))
    assert main(["validate", str(recipe)]) == 2
    assert lines(capsys.readouterr().err) == [f"{recipe}:3: weights.bits: must be an integer, not the string '4'"]


# ---------------------------------------------------------------- 5-8. arguments


def test_validate_of_a_folder_without_recipes_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["validate", str(tmp_path / "empty")]) == 2
    assert lines(capsys.readouterr().err) == [f"error: no recipe file in the folder {tmp_path / 'empty'} "
                                              "(*.yaml or *.yml)"]


def test_validate_plan_and_rebuild_take_the_same_arguments(tmp_path, capsys):
    folder = tmp_path / "recipes"
    folder.mkdir()
    hub_recipe(folder, "one")
    hub_recipe(folder, "two")
    hub = tmp_path / "hub"
    for arguments in ([str(folder)], [str(folder / "*.yaml")], [str(folder / "one.yaml"), str(folder / "two.yaml")]):
        assert main(["validate", *arguments]) == 0
        assert "2 recipes valid" in capsys.readouterr().out
        assert main(["plan", *arguments, "--to", str(hub), "--format", "json"]) == 0
        assert [r["recipe_name"] for r in json.loads(capsys.readouterr().out)] == ["one", "two"]
    from factory.fleet.plan import recipe_files
    from factory.recipe.paths import recipe_files as shared

    assert recipe_files([str(folder)]) == shared([str(folder)]) == [str(folder / "one.yaml"), str(folder / "two.yaml")]
    assert main(["plan", str(tmp_path / "nothing-*.yaml"), "--to", str(hub)]) == 2
    assert lines(capsys.readouterr().err) == [f"error: no recipe file matches '{tmp_path / 'nothing-*.yaml'}'"]


@pytest.mark.parametrize("arguments, message", [
    (["plan", "{recipe}", "--to", ""], "error: --to is empty: give a value, or leave the option out"),
    (["plan", "{recipe}", "--to", "  "], "error: --to is empty: give a value, or leave the option out"),
    (["plan", "{recipe}", "--to", "{hub}", "--workdir", ""], "error: --workdir is empty: give a value, or leave the option out"),
    (["plan", "{recipe}", "--to", "{hub}", "--org", ""], "error: --org is empty: give a value, or leave the option out"),
    (["push", "{recipe}", "--to", "{recipe}"], "error: --to {recipe}: is a file, not a folder"),
    (["quantize", "{recipe}", "--workdir", "{recipe}"], "error: --workdir {recipe}: is a file, not a folder"),
    (["rebuild", "{recipe}", "--to", "{hub}", "--max-builds", "0"],
     "error: --max-builds 0: must be at least 1 (leave it out to build every stale or missing build)"),
    (["rebuild", "{recipe}", "--to", "{hub}", "--max-builds", "-3"],
     "error: --max-builds -3: must be at least 1 (leave it out to build every stale or missing build)"),
])
def test_empty_and_impossible_options_are_one_line(tmp_path, capsys, arguments, message):
    recipe = hub_recipe(tmp_path)
    values = {"recipe": str(recipe), "hub": str(tmp_path / "hub")}
    assert main([a.format(**values) for a in arguments]) == 2
    assert lines(capsys.readouterr().err) == [message.format(**values)]
    assert not (tmp_path / "hub").exists() and not (tmp_path / "builds").exists()


def test_library_entry_points_refuse_empty_values_too(tmp_path):
    from factory.core.hub import target_for
    from factory.pipeline.build import workdir_root

    for call in (lambda: target_for(""), lambda: workdir_root(""), lambda: target_for(str(hub_recipe(tmp_path)))):
        with pytest.raises(UserError):
            call()


@pytest.mark.parametrize("argv", [["-v", "--debug", "validate", "x"], ["validate", "-v", "--debug", "x"],
                                  ["-v", "validate", "--debug", "x"]])
def test_global_flags_work_before_and_after_the_subcommand(argv):
    args = _parser().parse_args(argv)
    assert args.verbose is True and args.debug is True
    plain = _parser().parse_args(["validate", "x"])
    assert plain.verbose is False and plain.debug is False


def test_debug_before_the_subcommand_shows_the_traceback(tmp_path, monkeypatch):
    from factory.cli import commands as cli

    def broken(args):
        raise RuntimeError("internal")

    monkeypatch.setattr(cli, "cmd_validate", broken)
    with pytest.raises(RuntimeError, match="internal"):
        main(["--debug", "validate", str(hub_recipe(tmp_path))])


# ---------------------------------------------------------------- 9. timeouts, retries, Ctrl-C


def test_every_request_gets_a_timeout_and_bounded_retries(silent, monkeypatch):
    from huggingface_hub import constants

    from factory.core.net import make_client

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the client's request hook checks it

    client = make_client(0.5, 1)
    started = time.monotonic()
    with pytest.raises(Exception) as exc:
        client.get(silent.url + "/api/models/x/y", timeout=None)  # what HfApi.model_info passes
    assert type(exc.value).__name__ == "ReadTimeout"
    assert time.monotonic() - started < 5 and len(silent.accepted) == 2  # one try and one retry
    with pytest.raises(Exception):
        client.post(silent.url + "/api/commit", content=b"x", timeout=None)  # never sent twice
    assert len(silent.accepted) == 3


def test_plan_against_a_hub_that_never_answers_ends(tmp_path, silent):
    recipe = hub_recipe(tmp_path)
    started = time.monotonic()
    done = run_factory("plan", str(recipe), env=online(silent.url, FACTORY_HUB_TIMEOUT="1", FACTORY_HUB_RETRIES="1"),
                       timeout=60)
    assert time.monotonic() - started < 40
    assert done.returncode == 1, done.stderr
    assert lines(done.stderr) == ["error: cannot read tester/tiny-hub-rtn: the Hub did not answer within 1 s "
                                  "(ReadTimeout, 2 tries; FACTORY_HUB_TIMEOUT, FACTORY_HUB_RETRIES); run again"]
    assert "nothing was published" not in done.stderr  # plan publishes nothing: it says so only for writes


def test_ctrl_c_ends_a_hung_plan_at_once(tmp_path, silent):
    recipe = hub_recipe(tmp_path)
    # faulthandler: if the process does not end, SIGABRT makes it print every thread's stack (see below)
    env = {**os.environ, **online(silent.url, FACTORY_HUB_TIMEOUT="120"), "PYTHONFAULTHANDLER": "1"}
    # The child inherits this thread's signal mask and an ignored SIGINT: start it as a terminal would (SIGINT
    # neither blocked nor ignored), whatever earlier tests in this worker left behind; the state is reported below.
    inherited = (signal.getsignal(signal.SIGINT), sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    try:
        process = subprocess.Popen([sys.executable, "-m", "factory.cli", "plan", str(recipe)], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        signal.signal(signal.SIGINT, previous_handler)
    deadline = time.monotonic() + 60
    while not silent.accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert silent.accepted, "plan never reached the server"
    time.sleep(0.3)
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:  # hung in 3 loaded full runs (2026-11-27), cause not yet found: report
        masks = [line for task in Path(f"/proc/{process.pid}/task").glob("*/status")
                 for line in task.read_text().splitlines() if line.startswith(("SigBlk", "SigIgn", "SigCgt"))]
        process.send_signal(signal.SIGABRT)
        out, err = process.communicate(timeout=20)
        pytest.fail(f"plan did not end within 20 s of Ctrl-C (this worker's SIGINT handler and blocked signals: "
                    f"{inherited}; the child's per-thread masks: {masks}); its threads when aborted:\n{err[-6000:]}")
    assert time.monotonic() - interrupted < 5
    assert process.returncode == 130
    assert lines(err) == ["interrupted (Ctrl-C): nothing was written (plan only reads)"]


def test_bad_timeout_settings_are_one_line(tmp_path):
    done = run_factory("plan", str(hub_recipe(tmp_path)), env={"FACTORY_HUB_TIMEOUT": "soon"})
    assert done.returncode == 2
    assert lines(done.stderr) == ["error: FACTORY_HUB_TIMEOUT='soon': must be a number of seconds between 0 and 3600"]


@pytest.mark.parametrize("raw, expected", [("", "default"), ("  ", "default"), ("0", 0.0), ("2.5", 2.5),
                                           ("inf", math.inf), ("-1", None), ("nan", None), ("soon", None)])
def test_lock_timeout_setting(monkeypatch, raw, expected):
    from factory.core.locks import DEFAULT_TIMEOUT, lock_timeout

    monkeypatch.setenv("FACTORY_LOCK_TIMEOUT", raw)
    if expected is None:
        with pytest.raises(UserError, match=r"^FACTORY_LOCK_TIMEOUT=.*: must be a number of seconds \(0: do not wait\)$"):
            lock_timeout()
    else:
        assert lock_timeout() == (DEFAULT_TIMEOUT if expected == "default" else expected)


# ---------------------------------------------------------------- 10. the token never reaches a message or a file


def test_a_server_echoing_the_authorization_header_leaks_nothing(tmp_path, echo):
    recipe = hub_recipe(tmp_path)
    done = run_factory("-v", "plan", str(recipe), env=online(echo.url, HF_TOKEN=SECRET, FACTORY_HUB_RETRIES="0"))
    assert done.returncode == 1
    assert SECRET not in done.stdout + done.stderr
    last = lines(done.stderr)[-1]
    assert last.startswith("error: cannot read tester/tiny-hub-rtn: the Hub answered HTTP 500 (internal error")
    assert "Bearer *" in last or "Bearer" not in last  # scrubbed before the message is cut to 200 characters
    assert last.endswith("; run again") and "nothing was published" not in last


def test_scrub_removes_every_form_of_the_credential(monkeypatch):
    from factory.core.redact import scrub

    monkeypatch.setenv("HF_TOKEN", SECRET)
    for text in (f"Authorization: Bearer {SECRET}", f'{{"authorization": "{SECRET}"}}', f"token={SECRET}&x",
                 "authorization: Bearer anything-else", "bearer%20zzz.yyy", "hf_" + "a1" * 20):
        clean = scrub(text)
        assert SECRET not in clean and "anything-else" not in clean and "zzz" not in clean and "a1a1a1" not in clean
    assert scrub("nothing secret here") == "nothing secret here"


def test_server_messages_and_cli_errors_are_scrubbed(tmp_path, monkeypatch, capsys):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    from factory.cli import commands as cli
    from factory.core.hub import hub_errors

    monkeypatch.setenv("HF_TOKEN", SECRET)
    response = httpx.Response(502, request=httpx.Request("GET", "http://x"), text=f"Authorization: Bearer {SECRET}")
    with pytest.raises(Exception) as exc:
        with hub_errors("upload to", "o/n"):
            raise HfHubHTTPError(f"502 from proxy: Bearer {SECRET}", response=response)
    assert SECRET not in str(exc.value) and "nothing was published" in str(exc.value)

    def leaky(args):
        raise RuntimeError(f"request failed with headers Authorization: Bearer {SECRET}")

    monkeypatch.setattr(cli, "cmd_validate", leaky)
    assert main(["validate", "x.yaml"]) == 1
    assert SECRET not in capsys.readouterr().err


def test_manifest_never_records_the_token(tmp_path, monkeypatch):
    from factory.pipeline.build import Build, run_stage
    from factory.recipe import load_recipe

    monkeypatch.setenv("HF_TOKEN", SECRET)
    recipe = load_recipe(hub_recipe(tmp_path))
    build = Build(recipe, recipe.models[0], tmp_path)

    def work(out: Path) -> dict:
        raise RuntimeError(f"server said: Authorization: Bearer {SECRET}\nand {SECRET} again")

    with pytest.raises(RuntimeError):
        run_stage(build, "quantize", work)
    text = (build.dir / "manifest.json").read_text()
    assert SECRET not in text and "Bearer ***" in text
    record = build.manifest().stages["quantize"]
    assert record.status == "failed" and "***" in record.error and SECRET not in record.traceback


# ---------------------------------------------------------------- 11. messages say what happened


def test_broken_pipe_is_quiet():
    process = subprocess.Popen([sys.executable, "-m", "factory.cli", "schema"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # the reader leaves before the first byte, as `| head` does after its lines
    err = process.stderr.read().decode()
    process.wait(timeout=60)
    assert process.returncode == 141 and err == ""


@pytest.mark.parametrize("command, words", [
    ("validate", "interrupted (Ctrl-C): nothing was written"),
    ("quantize", "interrupted (Ctrl-C): no stage was running, so none was discarded"),
    ("push", "interrupted (Ctrl-C): the push was cut off"),
])
def test_interrupt_messages_fit_the_command(tmp_path, monkeypatch, capsys, command, words):
    import factory.pipeline.build
    from factory.cli import commands

    monkeypatch.setattr(factory.pipeline.build, "interrupted_stage", None)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "load_recipe", interrupted)  # the commands read the recipe first
    extra = ["--to", str(tmp_path / "hub")] if command == "push" else []
    assert main([command, str(hub_recipe(tmp_path)), *extra]) == 130
    err = lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(words), err


def test_an_interrupted_stage_is_named_and_discarded(tmp_path, monkeypatch, capsys):
    import factory.pipeline.build
    import factory.stages.artifact
    from factory.pipeline.build import run_stage

    def interrupted_work(out: Path) -> dict:
        (out / "half-written").write_text("x")
        raise KeyboardInterrupt

    monkeypatch.setattr(factory.pipeline.build, "interrupted_stage", None)
    monkeypatch.setattr(factory.stages.artifact, "build_artifact",
                        lambda build, log=print: run_stage(build, "quantize", interrupted_work))
    assert main(["quantize", str(hub_recipe(tmp_path)), "--workdir", str(tmp_path)]) == 130
    assert lines(capsys.readouterr().err) == [
        "interrupted (Ctrl-C): the quantize stage of hub-rtn / test/tiny was stopped and discarded (not marked "
        "done); finished stages are kept and the next run resumes there"]
    build_dir = tmp_path / "builds" / "hub-rtn" / "test--tiny"
    assert json.loads((build_dir / "manifest.json").read_text())["stages"]["quantize"]["status"] == "failed"
    assert sorted(p.name for p in build_dir.iterdir()) == [".build.lock", "manifest.json"]  # nothing half-written


# ---------------------------------------------------------------- 12-14. on a real (tiny) build


@pytest.fixture(scope="module")
def build_copy(tmp_path_factory, evaluated_build):
    """A copy of the session's evaluated build (its own workdir), carded for tester/tiny-rtn-4bit."""
    from factory.pipeline.build import Build
    from factory.recipe import load_recipe
    from factory.stages.card import card

    work, recipe_path = evaluated_build
    copy = tmp_path_factory.mktemp("hardening") / "work"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("upload", ".*.lock"))
    recipe = load_recipe(copy / recipe_path.name)
    build = Build(recipe, recipe.models[0], copy)
    card(build, "tester/tiny-rtn-4bit")
    return copy, copy / recipe_path.name, build


HOLD = r"""
import importlib, sys, time
from pathlib import Path
module_name, function_name, flag, release = sys.argv[1:5]
module = importlib.import_module(module_name)
real = getattr(module, function_name)
def held(*args, **kwargs):
    result = real(*args, **kwargs)
    Path(flag).touch()
    deadline = time.time() + 120
    while not Path(release).exists() and time.time() < deadline:
        time.sleep(0.05)
    return result
setattr(module, function_name, held)
from factory.cli import main
sys.exit(main(sys.argv[5:]))
"""


def held_run(tmp_path: Path, name: str, hook: str, *args: str, env: dict | None = None):
    """The CLI in a subprocess that stops in `hook` (module:function) until tmp_path/release exists."""
    module, function = hook.split(":")
    flag, log = tmp_path / f"{name}.in-hook", tmp_path / f"{name}.stderr"
    stderr = log.open("w")
    process = subprocess.Popen([sys.executable, "-c", HOLD, module, function, str(flag), str(tmp_path / "release"),
                                *args], cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                               stderr=stderr, text=True)
    return process, flag, log


def wait_for(condition, what: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def repo_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(org: Path) -> list[str]:
    return sorted(p.name for p in org.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_sigterm_and_sigkill_during_push_leave_a_complete_target(tmp_path, build_copy):
    from factory.core.hub import LocalFolder
    from factory.stages.push import push

    work, recipe, build = build_copy
    hub = tmp_path / "hub"
    push(build, LocalFolder(hub), "tester/tiny-rtn-4bit", log=lambda line: None)
    target = hub / "tester" / "tiny-rtn-4bit"
    before = repo_files(target)

    args = ("push", str(recipe), "--workdir", str(work), "--to", str(hub), "--force")
    process, flag, log = held_run(tmp_path, "term", "shutil:copyfile", *args)
    wait_for(flag.exists, "the push to start copying")
    assert leftovers(hub / "tester")  # its partial copy is there, beside the complete target
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    assert process.returncode == 143
    assert lines(log.read_text())[-1].startswith("terminated (SIGTERM): the push was cut off")
    assert leftovers(hub / "tester") == [] and repo_files(target) == before

    process, flag, _ = held_run(tmp_path, "kill", "shutil:copyfile", *args)
    wait_for(flag.exists, "the push to start copying")
    process.kill()
    process.wait(timeout=30)
    assert leftovers(hub / "tester") == [f".tiny-rtn-4bit.partial-{process.pid}"]  # SIGKILL: nothing can clean up
    assert repo_files(target) == before  # ... but the target is complete
    logs: list[str] = []
    push(build, LocalFolder(hub), "tester/tiny-rtn-4bit", force=True, log=logs.append)
    assert leftovers(hub / "tester") == [] and repo_files(target) == before  # the next run removed it
    assert any("re-published" in line and "nothing changed" in line for line in logs), logs  # 11: --force, same files


def test_a_killed_swap_is_put_back_by_the_next_run(tmp_path):
    from factory.core.atomic import atomic_dir, remove_stale

    dead = subprocess.Popen(["true"])
    dead.wait()
    target = tmp_path / "repo"
    aside = tmp_path / f".repo.old-{dead.pid}"  # a run killed between moving the old copy aside and the new in
    aside.mkdir()
    (aside / "weights").write_text("old")
    (tmp_path / f".repo.partial-{dead.pid}").mkdir()
    remove_stale(target, ".")
    assert (target / "weights").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    with atomic_dir(target, ".") as partial:  # replacing an existing folder never removes the path first
        (partial / "weights").write_text("new")
    assert (target / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_concurrent_pushes_to_one_target_wait_for_each_other(tmp_path, build_copy):
    work, recipe, build = build_copy
    hub = tmp_path / "hub"
    args = ("push", str(recipe), "--workdir", str(work), "--to", str(hub), "--force")
    first, flag, _ = held_run(tmp_path, "first", "shutil:copyfile", *args)
    wait_for(flag.exists, "the first push to hold the locks")

    impatient = run_factory(*args, env={"FACTORY_LOCK_TIMEOUT": "0"})
    assert impatient.returncode == 1
    assert lines(impatient.stderr) == [
        f"error: another factory run (pid {first.pid}) holds the build rtn-4bit / test/tiny ({build.dir}); run "
        "again when it has finished (or raise FACTORY_LOCK_TIMEOUT)"]

    second, _, second_log = held_run(tmp_path, "second", "shutil:copyfile", *args)
    wait_for(lambda: "waiting for another factory run" in second_log.read_text(), "the second push to wait")
    (tmp_path / "release").touch()
    assert first.wait(timeout=60) == 0 and second.wait(timeout=60) == 0, second_log.read_text()
    assert leftovers(hub / "tester") == []
    assert set(repo_files(hub / "tester" / "tiny-rtn-4bit")) == set(repo_files(build.stage_dir("card"))) | {
        f"evaluation/{name}" for name in ("scores.json", "metrics.json", "perplexity.json", "lm_eval_results.json")
        if (build.stage_dir("evaluate") / name).is_file()} | set(repo_files(build.model_dir))


def test_concurrent_card_runs_do_not_collide(tmp_path, build_copy):
    work, recipe, _ = build_copy
    args = ("card", str(recipe), "--workdir", str(work), "--org", "concurrent")
    first, flag, first_log = held_run(tmp_path, "first", "factory.stages.card:check_card", *args)
    wait_for(flag.exists, "the first card run to hold the build")
    second, _, second_log = held_run(tmp_path, "second", "factory.stages.card:check_card", *args)
    wait_for(lambda: "waiting for another factory run" in second_log.read_text(), "the second card run to wait")
    (tmp_path / "release").touch()
    assert first.wait(timeout=60) == 0, first_log.read_text()
    assert second.wait(timeout=60) == 0, second_log.read_text()
    assert second.stdout.read().strip().endswith("(unchanged)")  # it found the first run's card


def test_published_files_hold_no_local_path(tmp_path, evaluated_build, tiny_llama, tmp_path_factory):
    from factory.core.hub import LocalFolder
    from factory.pipeline.build import Build
    from factory.recipe import load_recipe
    from factory.recipe.eval_plan import TASKS_DIR
    from factory.stages.card import card
    from factory.stages.push import push

    work, recipe_path = evaluated_build
    recipe = load_recipe(recipe_path)
    build = Build(recipe, recipe.models[0], work)
    card(build, "paths/tiny-rtn-4bit")
    raw = (build.stage_dir("evaluate") / "lm_eval_results.json").read_text()
    assert str(TASKS_DIR) in raw  # the harness's own output does name local paths
    push(build, LocalFolder(tmp_path / "hub"), "paths/tiny-rtn-4bit", log=lambda line: None)

    published = repo_files(tmp_path / "hub" / "paths" / "tiny-rtn-4bit")
    forbidden = {str(work), str(work.resolve()), os.path.expanduser("~"), str(TASKS_DIR), str(tiny_llama),
                 str(tmp_path_factory.getbasetemp()), str(REPO), sys.prefix}
    leaks = {name: sorted(f for f in forbidden if f.encode() in data) for name, data in published.items()}
    assert {name: found for name, found in leaks.items() if found} == {}
    results = published["evaluation/lm_eval_results.json"].decode()
    assert '"<bundled-tasks>/smoke_mc.jsonl"' in results and '"pretrained": "<model>"' in results
    json.loads(results)  # still valid JSON
    assert (build.stage_dir("evaluate") / "lm_eval_results.json").read_text() == raw  # the build's own copy is untouched
