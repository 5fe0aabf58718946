"""factory.core.safe_yaml: hostile recipe files are refused quickly, normal ones load as yaml.safe_load does."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from factory.core.safe_yaml import MAX_BYTES, MAX_DEPTH, MAX_NODES, YamlRejected, load_yaml_document, read_recipe_text

TESTS = Path(__file__).parent
REPO = TESTS.parent
HOSTILE = sorted((TESTS / "hostile").glob("*.yaml"))
# Every file a recipe loader reads today, except the one that is not YAML at all.
ORDINARY = sorted((REPO / "recipes").glob("*.yaml")) + sorted(
    p for p in (TESTS / "broken_recipes").glob("*.yaml") if p.name != "malformed-yaml.yaml")

GPTQ_4BIT = """\
# GPTQ W4A16, group size 128, the paper's grid (Huang et al. 2024, Table 1).
name: gptq-4bit
description: GPTQ 4-bit weights, group size 128, LLaMA-3 and LLaVA-Next.
method: gptq
weights:
  bits: 4
  group_size: 128
  symmetric: true
calibration:             # the paper's: 128 random 2048-token windows of WikiText2 train
  source: wikitext2
  samples: 128
  seq_len: 2048
  seed: 2
gptq:
  dampening_frac: 0.01   # the paper's GPTQ script
models:
  - id: meta-llama/Meta-Llama-3-8B
    revision: main
    kind: causal-lm
    license: llama3
  - id: meta-llama/Meta-Llama-3-70B
    revision: main
    kind: causal-lm
    license: llama3
  - id: llava-hf/llama3-llava-next-8b-hf
    revision: main
    kind: llava-next   # vision tower and projector stay in bf16 (default ignore list)
    license: llama3
"""


def old_line_index(text: str) -> dict[tuple, int]:
    """The line index as factory.recipe built it before safe_yaml (a recursive walk of yaml.compose's
    node tree): the reference the single-pass loader must match on ordinary recipes."""
    lines: dict[tuple, int] = {}

    def walk(n, path: tuple) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                sub = (*path, key.value)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
                lines[sub] = key.start_mark.line + 1
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, (*path, i))

    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        walk(node, ())
    return lines


def rejected(text: str | bytes, source: str = "r.yaml") -> YamlRejected:
    with pytest.raises(YamlRejected) as info:
        load_yaml_document(text, source)
    return info.value


def measured(fn):
    """(result or exception, seconds, peak bytes allocated through Python), timed without tracing."""
    def call():
        try:
            return fn()
        except YamlRejected as exc:
            return exc

    start = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    try:
        call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, seconds, peak


@pytest.mark.parametrize("path", HOSTILE, ids=lambda p: p.name)
def test_hostile_file_is_refused_with_its_line(path):
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(YamlRejected) as info:
        load_yaml_document(read_recipe_text(path), str(path))
    exc = info.value
    assert str(exc) == f"{path}{expected}"
    assert f":{exc.line}: {exc.message}" == expected and "\n" not in exc.message


def test_billion_laughs_is_refused_fast_and_small():
    text = (TESTS / "hostile" / "billion-laughs.yaml").read_text()
    exc, seconds, peak = measured(lambda: load_yaml_document(text, "laughs.yaml"))
    assert isinstance(exc, YamlRejected) and exc.line == 3
    assert seconds < 1 and peak < 5 * 1024 * 1024


@pytest.mark.parametrize("style", ["flow-seq", "flow-map", "block-seq", "block-map"])
def test_deep_nesting_is_refused_without_recursion(style, tmp_path):
    if style == "flow-seq":
        text = "[" * 10_000 + "]" * 10_000
    elif style == "flow-map":
        text = "{a: " * 10_000 + "1" + "}" * 10_000
    elif style == "block-seq":
        text = "- " * 10_000 + "x\n"
    else:  # 1,000 levels of one-space indentation (10,000 would be 50 MB)
        text = "".join(" " * i + "a:\n" for i in range(1_000)) + " " * 1_000 + "1\n"
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    exc, seconds, peak = measured(lambda: load_yaml_document(read_recipe_text(path), str(path)))
    assert isinstance(exc, YamlRejected), exc
    assert exc.message == f"nested deeper than {MAX_DEPTH} levels"
    assert exc.line == (MAX_DEPTH + 1 if style == "block-map" else 1)
    assert seconds < 1 and peak < 5 * 1024 * 1024


def test_nesting_up_to_the_bound_is_accepted():
    data, lines = load_yaml_document("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    for _ in range(MAX_DEPTH - 1):
        data = data[0]
    assert data == []


def test_too_many_nodes(monkeypatch):
    monkeypatch.setattr("factory.core.safe_yaml.MAX_NODES", 1_000)  # the real bound takes ~3 s of parsing
    load_yaml_document("[" + "1, " * 998 + "1]")  # 1,000 nodes, the list included
    exc = rejected("a: 1\nb: [" + "1, " * 999 + "1]")
    assert (exc.line, exc.message) == (2, "more than 1000 YAML nodes")
    assert MAX_NODES == 100_000


def test_large_file_is_refused_without_reading_it(tmp_path, monkeypatch):
    path = tmp_path / "big.yaml"
    with open(path, "wb") as f:
        f.write(b"a: b\n" * (2 * 1024 * 1024 // 5 + 1))  # 2 MiB
    opened = []
    monkeypatch.setattr("factory.core.safe_yaml.open", lambda *a, **k: opened.append(a), raising=False)
    with pytest.raises(YamlRejected) as info:
        read_recipe_text(path)
    assert info.value.message == "recipe file is larger than 1 MiB" and info.value.line is None
    assert not opened  # refused from its size alone


def test_large_text_and_bytes_are_refused():
    assert rejected("#" * (MAX_BYTES + 1)).message == "recipe file is larger than 1 MiB"
    assert rejected(b"#" * (MAX_BYTES + 1)).message == "recipe file is larger than 1 MiB"
    # Counted in UTF-8 bytes, not characters.
    assert rejected("#" + "é" * (MAX_BYTES // 2)).message == "recipe file is larger than 1 MiB"


def test_device_file_is_bounded(tmp_path):
    with pytest.raises(YamlRejected, match="not a regular file"):
        read_recipe_text("/dev/zero")
    with pytest.raises(YamlRejected, match="cannot read the file"):
        read_recipe_text(tmp_path / "missing.yaml")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: x\ndescription: caf\xe9\n".encode("latin-1"))
    with pytest.raises(YamlRejected) as info:
        read_recipe_text(path)
    assert str(info.value) == f"{path}:2: not a UTF-8 text file (byte 0xe9)"
    assert rejected(path.read_bytes()).line == 2


def test_tags_and_keys():
    assert rejected("a: !!python/name:os.system").message == "YAML tags are not allowed in recipes (!!python/name:os.system)"
    assert rejected("a: !!binary aGk=").message.startswith("YAML tags are not allowed")
    assert rejected("a: !!map {b: 1}").message.startswith("YAML tags are not allowed")
    assert rejected("a: ! 1").message.startswith("YAML tags are not allowed")
    assert rejected("%TAG !! tag:evil.com,2000:\n---\na: !!str x").message.startswith("YAML tags are not allowed")
    for key in ("1", "1.5", "null", "~", "on", "2024-01-01", "!!int 3"):
        assert rejected(f"{key}: x").message.startswith("mapping keys must be strings"), key
    assert rejected("? - a\n: 1\n").message == "mapping keys must be strings"
    # Standard scalar tags are fine and give what safe_load gives.
    text = "a: !!str 12\nb: !!int '7'\nc: !!float 1\nd: !!bool yes\ne: !!null x\n'1': quoted\n!!str 2: tagged"
    assert load_yaml_document(text)[0] == yaml.safe_load(text)


def test_bad_scalars_are_refused_not_crashing():
    assert rejected("seed: !!bool maybe").message.startswith("invalid bool value 'maybe'")
    assert rejected("date: 2024-13-45").message.startswith("invalid timestamp value")
    # YAML 1.1 base-60 ints convert in quadratic time: refused by length.
    assert rejected("n: 1" + ":1" * 600).message == "number longer than 1000 characters"
    assert rejected("n: 1\nx: =").message == "unsupported YAML value '=' (quote it)"
    assert rejected("x: <<").message == "YAML merge keys (<<) are not allowed in recipes"


def test_invalid_yaml_is_wrapped_with_its_line():
    text = (TESTS / "broken_recipes" / "malformed-yaml.yaml").read_text()
    exc = rejected(text)
    assert (exc.line, exc.message) == (5, "invalid YAML: expected <block end>, but found '<block sequence start>'")
    assert isinstance(exc.__cause__, yaml.YAMLError)
    exc = rejected("a: 1\nb: \x00\n")
    assert (exc.line, exc.message) == (2, "invalid YAML: unacceptable character #x0000: special characters are not allowed")


def test_normal_recipe_same_data_and_lines_as_before():
    data, lines = load_yaml_document(GPTQ_4BIT, "gptq-4bit.yaml")
    assert data == yaml.safe_load(GPTQ_4BIT)
    assert lines == old_line_index(GPTQ_4BIT)


def test_normal_recipe_line_index():
    _, lines = load_yaml_document(GPTQ_4BIT, "gptq-4bit.yaml")
    assert lines[()] == 2 and lines[("name",)] == 2 and lines[("weights",)] == 5
    assert lines[("weights", "group_size")] == 7 and lines[("gptq", "dampening_frac")] == 15
    assert lines[("models",)] == 16 and lines[("models", 0)] == 17 and lines[("models", 0, "id")] == 17
    assert lines[("models", 2)] == 25 and lines[("models", 2, "kind")] == 27
    assert len(lines) == 1 + 7 + 3 + 4 + 1 + 3 * (1 + 4)


@pytest.mark.parametrize("path", ORDINARY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_existing_recipes_load_as_before(path):
    text = read_recipe_text(path)
    data, lines = load_yaml_document(text, str(path))
    assert data == yaml.safe_load(text)
    assert lines == old_line_index(text)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n...\n", "5", "- a\n- b\n", "a: {b: [1, {c: d}]}\n",
                                  "x: 0x10\ny: 1e26\nz: on\nd: 2024-01-01\nf: 1_000.5\ns: 1:30\n'<<': 1\n",
                                  "a:\n  - b: 1\n    c:\n      - 2\n      -\n  -\n"])
def test_small_documents_match_safe_load(text):
    data, lines = load_yaml_document(text)
    assert data == yaml.safe_load(text)
    assert lines == old_line_index(text)
