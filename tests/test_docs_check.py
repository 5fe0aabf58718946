"""The docs check's reading of README.md (tests/docs_check.py): what it runs, parses or skips.

The check itself (`make docs-check`) runs the commands; these tests only classify them, fast."""

from __future__ import annotations

from pathlib import Path

import docs_check
import pytest
from docs_check import Command, classify, offline_recipes, python_blocks, readme_commands

ROOT = Path(__file__).resolve().parent.parent

SAMPLE = '''# A README

Run `factory methods --format markdown` or `factory speed RECIPE [--model ID]`.

```bash
make demo   # the demo
.venv/bin/python -m factory.cli schema
# a comment line
factory publish recipes/demo-smollm2-gguf-q4km.yaml --to hub  # offline
./config.sh --url https://example.org \\
  --unattended
```

```yaml
factory: not a command
```

```python
import json
print(json.dumps({}))
```
'''


def test_bash_lines_inline_spans_continuations_and_comments():
    texts = [c.text for c in readme_commands(SAMPLE)]
    assert texts == ["factory methods --format markdown", "factory speed RECIPE [--model ID]", "make demo", "factory schema",
                     "factory publish recipes/demo-smollm2-gguf-q4km.yaml --to hub",
                     "./config.sh --url https://example.org --unattended"]
    where = {c.text: c.where for c in readme_commands(SAMPLE)}
    assert where["make demo"] == "README.md:6" and where["./config.sh --url https://example.org --unattended"] == "README.md:10"


@pytest.mark.parametrize("text, kind", [
    ("factory methods --format markdown", "run"),
    ("factory validate recipes/", "run"),  # reads recipes only, Hub models included
    ("factory publish recipes/demo-smollm2-gguf-q4km.yaml --to hub", "run"),
    ("factory publish recipes/demo-smollm2-gguf-q4km.yaml", "parse"),  # no --to: the Hub
    ("factory publish recipes/awq-4bit.yaml --to hub", "parse"),  # its models come from the Hub
    ("factory plan --format markdown", "parse"),
    ("factory speed RECIPE [--model ID]", "synopsis"),
    ("factory quantize", "synopsis"),  # a verb named in prose
    ("factory speed RECIPE [--modle ID]", "fail"),  # a flag the verb does not take
    ("factory publish recipes/awq-4bit.yaml --dryrun", "fail"),  # the parser refuses it
    ("factory deploy recipes/awq-4bit.yaml", "fail"),
    ("make test", "skip"),
    ("gh workflow run rebuild.yml", "skip"),
])
def test_classification(text, kind, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert classify(Command(text, "README.md:1"), ROOT).kind == kind


def test_python_blocks_compile_and_snippets_run_sketches_do_not(tmp_path):
    (where, code), = python_blocks(SAMPLE)
    assert where == "README.md:18" and code.startswith("import json")
    assert docs_check._check_python(code, tmp_path, {}, listing=True)[0] == "listed"
    assert docs_check._check_python("class A(B):\n    def f(self): ...\n", tmp_path, {}, listing=True)[0] == "ok"
    status, why, _ = docs_check._check_python("def f(:\n", tmp_path, {}, listing=True)
    assert status == "FAIL" and "does not compile" in why


def test_offline_recipes_are_the_shipped_recipes_without_hub_models():
    offline = offline_recipes(ROOT)
    assert "recipes/demo-smollm2-gptq-4bit.yaml" in offline and "recipes/demo-smollm2-gguf-q4km.yaml" in offline
    assert "recipes/awq-4bit.yaml" not in offline
    assert all(Path(r).name.startswith("demo-") or "smollm2" in r for r in offline)


def test_every_command_in_the_real_readme_is_known(monkeypatch):
    """What the docs check refuses before running anything: an unknown verb or flag in README.md."""
    monkeypatch.chdir(ROOT)
    commands = [classify(c, ROOT) for c in readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))]
    assert [f"{c.where}: {c.text}: {c.why}" for c in commands if c.kind == "fail"] == []
    assert any(c.kind == "run" for c in commands) and any(c.kind == "parse" for c in commands)
