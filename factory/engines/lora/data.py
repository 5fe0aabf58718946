"""Fine-tuning data: Alpaca-format records (instruction, input, output) and the Alpaca prompt template.

Sources (recipe `finetune.data.source`):
  alpaca  the Stanford Alpaca set from the Hub (tatsu-lab/alpaca, 52k records), through `datasets`
  file    a local .json (a list of records) or .jsonl (one record a line)
  demo    factory/data/demo_alpaca.jsonl: small synthetic records made for offline runs (smoke data)

A record is a JSON object with string fields `instruction` and `output` (both non-empty) and an
optional string `input`; other fields are ignored. A file with any other record is refused, naming
the first bad one (`check_file`), before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from factory.core.errors import UserError
from factory.core.net import configure_hub_client, hub_timeout
from factory.core.paths import DATA_DIR
from factory.core.safepath import COMMIT

DEMO_FILE = DATA_DIR / "demo_alpaca.jsonl"
ALPACA_HUB_ID = "tatsu-lab/alpaca"

# Stanford Alpaca's prompt template (github.com/tatsu-lab/stanford_alpaca, train.py, PROMPT_DICT),
# the one QLoRA and IR-QLoRA fine-tune Alpaca with; the loss covers the response only.
PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
PROMPT_NO_INPUT = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Response:\n")


class BadRecord(ValueError):
    """A record that is not Alpaca-format; the message names it (`record N: ...`)."""


def prompt(record: dict, template: str = "alpaca") -> str:
    if template != "alpaca":
        raise ValueError(f"unknown prompt template {template!r}")
    if record.get("input"):
        return PROMPT_INPUT.format(instruction=record["instruction"], input=record["input"])
    return PROMPT_NO_INPUT.format(instruction=record["instruction"])


def record_problem(record) -> str | None:
    """Why `record` is not an Alpaca record, or None."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object with instruction/input/output"
    for field in ("instruction", "output"):
        if field not in record:
            return f"has no {field!r} field (Alpaca records have instruction, input, output)"
        if not isinstance(record[field], str) or not record[field].strip():
            return f"field {field!r} must be a non-empty string"
    if "input" in record and record["input"] is not None and not isinstance(record["input"], str):
        return "field 'input' must be a string"
    return None


def read_file(path: Path) -> list[dict]:
    """The records of a .json or .jsonl file; BadRecord naming the first that is not Alpaca-format."""
    text = path.read_text(encoding="utf-8", errors="strict")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"record {len(records) + 1} (line {number})", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise BadRecord(f"record {len(records) + 1} (line {number}) is not JSON: {exc.msg}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadRecord(f"not JSON ({exc.msg} at line {exc.lineno}); Alpaca .json is a list of records") from None
        if not isinstance(data, list):
            raise BadRecord(f"a JSON {type(data).__name__}, not a list of Alpaca records")
        records = [(f"record {i + 1}", r) for i, r in enumerate(data)]
    if not records:
        raise BadRecord("no records")
    for name, record in records:
        problem = record_problem(record)
        if problem:
            raise BadRecord(f"{name} {problem}")
    return [r for _, r in records]


def check_file(path: Path) -> str | None:
    """One line saying why a data file cannot be used, or None."""
    try:
        read_file(path)
    except BadRecord as exc:
        return str(exc)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    return None


def alpaca_commit(revision: str) -> str:
    """The commit of tatsu-lab/alpaca that `revision` (branch, tag or commit) names now: the data is read at
    that commit and the card records it, so a build says exactly which Alpaca it was trained on."""
    if COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import HfApi

    configure_hub_client()
    try:
        return HfApi().dataset_info(ALPACA_HUB_ID, revision=revision, timeout=hub_timeout()).sha
    except Exception as exc:  # offline, unknown revision, hub errors: all mean "cannot say which commit"
        raise UserError(f"finetune.data: revision {revision!r} of the Alpaca dataset ({ALPACA_HUB_ID}) could not be "
                        f"resolved on the Hub ({type(exc).__name__}); pin a 40-hex commit, or use "
                        "finetune.data.source: demo or file offline") from None


def load_records(source: str, path: Path | None = None, samples: int | None = None,
                 revision: str | None = None) -> list[dict]:
    """The fine-tuning records of a recipe's data block (`revision`: the Alpaca commit to read, see alpaca_commit)."""
    if source == "demo":
        records = read_file(DEMO_FILE)
    elif source == "file":
        records = read_file(path)
    elif source == "alpaca":
        try:
            from datasets import load_dataset

            dataset = load_dataset(ALPACA_HUB_ID, split="train", revision=revision)
        except Exception as exc:  # offline, no such dataset, hub errors: all mean "not reachable"
            raise UserError(f"finetune: the Alpaca dataset ({ALPACA_HUB_ID}) could not be loaded from the Hub "
                            f"({type(exc).__name__}); use finetune.data.source: demo or file offline") from None
        records = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]} for r in dataset]
    else:
        raise ValueError(f"unknown data source {source!r}")
    return records[:samples] if samples else records


def describe(source: str, path: str | None, n_records: int, commit: str | None = None) -> str:
    """What the card says the model was trained on."""
    if source == "alpaca":
        at = f" at commit `{commit}`" if commit else ""
        return (f"Stanford Alpaca ([{ALPACA_HUB_ID}](https://huggingface.co/datasets/{ALPACA_HUB_ID})){at}, "
                f"{n_records} records")
    if source == "demo":
        return (f"the factory's bundled demo set ({n_records} small synthetic Alpaca-format records: "
                "smoke data, not a benchmark)")
    return f"a local Alpaca-format file ({Path(path).name}, {n_records} records)"
