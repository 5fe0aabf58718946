"""Every integration the factory uses imports with the installed (locked) set.

Run first (conftest orders this file ahead of the rest): a broken import, such as lmms-eval's
`filelock._api` under filelock 4, fails here in seconds instead of after a model run. The
imports run in one fresh interpreter, apart from the tests' own imports.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

INTEGRATIONS = [
    "llmcompressor",
    "llmcompressor.modifiers.quantization",
    "llmcompressor.modifiers.transform.awq",
    "llmcompressor.modifiers.transform.smoothquant",
    "compressed_tensors",
    "bitsandbytes",
    "peft",
    "lm_eval",
    "lmms_eval.evaluator",
    "lmms_eval.models.simple.llava_hf",
    "huggingface_hub",
    "safetensors.torch",
    "gguf",
    "transformers",
]


PROBE = """
import importlib, json, sys, traceback
results = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        results[name] = None
    except BaseException:
        results[name] = traceback.format_exc(limit=6)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def import_results() -> dict[str, str | None]:
    """Import every integration in one fresh interpreter (about 20 s on 2 cores, most of it torch)."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *INTEGRATIONS], capture_output=True, text=True, timeout=600,
                          env={"HF_HUB_OFFLINE": "1", "LOGURU_LEVEL": "ERROR", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", INTEGRATIONS)
def test_integration_imports(module, import_results):
    assert import_results[module] is None, f"import {module} failed:\n{import_results[module]}"
