"""`factory report` over fake build folders (tests/report_fakes.py): tables in the paper's shape with its
figures beside ours, labels, CSV/JSON, plots, bad input, the push to a local folder and reading it back."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, run_factory
from factory.fleet.report import build_report
from factory.fleet.report_markdown import markdown
from factory.fleet.report_plots import pareto
from factory.fleet.report_publish import make_report, push_report
from factory.fleet.report_sources import local
from factory.recipe.paper import lora_ft_rows, paper_rows
from factory.stages.paper_table import cell_text
from report_fakes import fake_build, scores_for, speed_for

LLAMA = "meta-llama/Meta-Llama-3-8B"
LLAVA = "llava-hf/llama3-llava-next-8b-hf"
RECIPES = REPO / "recipes"


def _paper_like(ppl: float, acc: float) -> dict[str, tuple[float, float]]:
    return {"wikitext2_ppl": (6.1, ppl), "c4_ppl": (9.2, ppl * 1.5), "ptb_ppl": (10.6, ppl * 1.7),
            **{t: (0.7, acc) for t in ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande")}}


@pytest.fixture
def grid(tmp_path):
    """GPTQ 4-bit and RTN 2-bit (benchmark figures), BiLLM (simulated, counted bits), one LLaVA-Next build."""
    fake_build(tmp_path, RECIPES / "gptq-4bit.yaml", LLAMA, scores_for(_paper_like(6.9, 0.66)),
               speed=speed_for(42.0), size_bytes=5_700_000_000)
    fake_build(tmp_path, RECIPES / "rtn-2bit.yaml", LLAMA, scores_for(_paper_like(2500.0, 0.25)),
               size_bytes=3_100_000_000)
    fake_build(tmp_path, RECIPES / "billm-1.1bit.yaml", LLAMA, scores_for(_paper_like(30.0, 0.35), smoke=True),
               size_bytes=16_000_000_000, artifact={"effective_bits": 1.1234})
    fake_build(tmp_path, RECIPES / "gptq-4bit.yaml", LLAVA,
               scores_for({"ai2d": (0.7, 0.68), "chartqa": (0.6, 0.55)}))
    recipes = [str(RECIPES / n) for n in ("gptq-4bit.yaml", "rtn-2bit.yaml", "billm-1.1bit.yaml")]
    return tmp_path, recipes


def test_table1_shape_with_the_papers_figure_beside_ours(grid):
    root, recipes = grid
    found = local(recipes, root)
    report = build_report(found.builds, found.left_out)
    ptq = next(t for t in report.tables if t.kind == "ptq" and t.base_model == LLAMA)
    assert [c.key for c in ptq.columns] == ["wikitext2_ppl", "c4_ppl", "ptb_ppl", "piqa", "arc_e", "arc_c",
                                            "hellaswag", "winogrande", "avg"]
    names = [r["name"] for r in ptq.rows]
    assert names[0] == "base model" and names[1:] == ["billm W1.1A16-g128-simulated", "rtn W2A16-g128", "gptq W4A16-g128"]
    gptq = next(r for r in ptq.rows if r["name"].startswith("gptq"))
    theirs = paper_rows(LLAMA, "GPTQ", "4", 128)["GPTQ W4A16-g128"]
    cell = gptq["cells"]["wikitext2_ppl"]
    assert (cell.ours, cell.paper) == (6.9, theirs["wikitext2_ppl"])
    assert cell.diff == pytest.approx(6.9 - theirs["wikitext2_ppl"])
    assert cell_text(cell) == f"6.90 / {theirs['wikitext2_ppl']:.2f} (+{6.9 - theirs['wikitext2_ppl']:.2f})"
    assert gptq["cells"]["piqa"].ours == pytest.approx(66.0)  # accuracies in percent, as the paper prints them
    assert gptq["cells"]["avg"].ours == pytest.approx(66.0) and gptq["cells"]["avg"].paper == theirs["avg"]
    base = ptq.rows[0]["cells"]["wikitext2_ppl"]
    assert (base.ours, base.paper) == (6.1, paper_rows(LLAMA, "GPTQ", "4", 128)["FP16"]["wikitext2_ppl"])
    # size, speed and effective bits: counted by the manifest (BiLLM) or nominal (GPTQ: 4 + 16/128)
    assert gptq["cells"]["size_gb"].ours == pytest.approx(5.7)
    assert gptq["cells"]["decode_tokens_per_s"].ours == 42.0
    assert gptq["cells"]["effective_bits"].ours == pytest.approx(4.125)
    billm = next(r for r in ptq.rows if r["name"].startswith("billm"))
    assert billm["cells"]["effective_bits"].ours == pytest.approx(1.1234)
    assert billm["cells"]["wikitext2_ppl"].paper == paper_rows(LLAMA, "BiLLM", "1.1", 128)["BiLLM W1.1A16-g128"][
        "wikitext2_ppl"]
    text = markdown(report)
    assert "4.12 (nominal)" in text and "1.12 |" in text


def test_labels_smoke_simulated_runtime(grid):
    root, recipes = grid
    report = build_report(*_found(local(recipes, root)))
    rows = {r["name"]: r for t in report.tables for r in t.rows if r["build"] is not None}
    assert rows["billm W1.1A16-g128-simulated"]["label"].split("; ")[:2] == ["smoke", "simulated"]
    assert rows["gptq W4A16-g128"]["label"] == "eval: transformers on the CPU; speed: transformers"
    assert "smoke" not in rows["rtn W2A16-g128"]["label"] and "simulated" not in rows["rtn W2A16-g128"]["label"]
    llama = markdown(report).split(f"## {LLAMA}", 1)[1]
    line = next(ln for ln in llama.splitlines() if ln.startswith("| gptq W4A16-g128"))
    assert line.endswith("| eval: transformers on the CPU; speed: transformers |")


def _found(found):
    return found.builds, found.left_out


def test_multimodal_and_lora_ft_tables(tmp_path):
    fake_build(tmp_path, RECIPES / "gptq-4bit.yaml", LLAVA, scores_for({"ai2d": (0.7, 0.68), "chartqa": (0.6, 0.5)}))
    mmlu = {"mmlu": (0.65, 0.57), "mmlu_humanities": (0.59, 0.5), "mmlu_stem": (0.55, 0.49),
            "mmlu_social_sciences": (0.76, 0.66), "mmlu_other": (0.71, 0.64)}
    fake_build(tmp_path, RECIPES / "qlora-4bit.yaml", LLAMA, scores_for(mmlu, nf4={"mmlu": (0.65, 0.62)}))
    report = build_report(*_found(local([str(RECIPES / "gptq-4bit.yaml"), str(RECIPES / "qlora-4bit.yaml")],
                                        tmp_path)))
    kinds = {(t.kind, t.base_model) for t in report.tables}
    assert kinds == {("multimodal", LLAVA), ("lora-ft", LLAMA)}
    lora = next(t for t in report.tables if t.kind == "lora-ft")
    assert [c.key for c in lora.columns] == ["mmlu_humanities", "mmlu_stem", "mmlu_social", "mmlu_other", "mmlu_avg"]
    names = [r["name"] for r in lora.rows]
    assert names[:2] == ["base model", "NF4 base (no fine-tuning)"]
    paper = lora_ft_rows(LLAMA, "QLoRA")
    qlora = lora.rows[2]["cells"]["mmlu_avg"]
    assert qlora.ours == pytest.approx(57.0) and qlora.paper == paper["QLoRA"]["mmlu_avg"]
    assert lora.rows[1]["cells"]["mmlu_avg"].paper == paper["NormalFloat"]["mmlu_avg"]
    mm = next(t for t in report.tables if t.kind == "multimodal")
    assert [c.key for c in mm.columns] == ["ai2d", "chartqa"]
    assert all(c.paper is None for r in mm.rows for c in r["cells"].values())


def test_csv_json_and_plots_in_the_report_folder(grid):
    root, recipes = grid
    made = make_report(recipes, root, root / "report", log=lambda line: None)
    names = set(made.files)
    assert {"README.md", "report.csv", "report.json"} <= names
    pngs = sorted(n for n in names if n.endswith(".png"))
    assert set(pngs) == {f"meta-llama--Meta-Llama-3-8B-{p}.png" for p in
                         ("ppl-vs-bits", "recovery-heatmap", "quality-vs-size", "speed-vs-size")} | {
        f"llava-hf--llama3-llava-next-8b-hf-{p}.png" for p in ("recovery-heatmap", "quality-vs-size")}
    for png in pngs:
        assert (root / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in made.files["README.md"].read_text()
    rows = list(csv.DictReader((root / "report" / "report.csv").open()))
    cell = next(r for r in rows if r["row"] == "gptq W4A16-g128" and r["column"] == "wikitext2_ppl"
                and r["base_model"] == LLAMA)
    assert float(cell["ours"]) == 6.9 and float(cell["paper"]) == paper_rows(LLAMA, "GPTQ", "4", 128)[
        "GPTQ W4A16-g128"]["wikitext2_ppl"]
    assert cell["source"] == "builds/gptq-4bit/meta-llama--Meta-Llama-3-8B" and cell["label"]
    data = json.loads((root / "report" / "report.json").read_text())
    assert len(data["cells"]) == len(rows)
    assert {b["method"] for b in data["builds"]} == {"gptq", "rtn", "billm"}
    # rendering again gives the same bytes (what makes an unchanged report push nothing)
    before = {n: p.read_bytes() for n, p in made.files.items()}
    again = make_report(recipes, root, root / "report", log=lambda line: None)
    assert {n: p.read_bytes() for n, p in again.files.items()} == before


def test_pareto_frontier():
    points = [(5.0, 0.99), (3.0, 0.5), (4.0, 0.95), (6.0, 0.98), (3.5, 0.4)]
    assert pareto(points) == [(3.0, 0.5), (4.0, 0.95), (5.0, 0.99)]


@pytest.mark.parametrize("content, says", [('{"tasks": {"piqa": {"acc": {"base": 0.7', "not valid JSON (truncated?)"),
                                           ('{"results": {"piqa": 0.7}}', "not a factory evaluation")])
def test_bad_evaluation_json_is_one_line_and_the_report_goes_on(grid, content, says):
    root, recipes = grid
    bad = root / "builds" / "rtn-2bit" / "meta-llama--Meta-Llama-3-8B" / "eval" / "scores.json"
    bad.write_text(content)
    done = run_factory("report", *recipes, "--workdir", str(root), "--to", str(root / "hub"))
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "builds/rtn-2bit/meta-llama--Meta-Llama-3-8B/eval/scores.json" in lines[0]
    assert says in lines[0] and "Traceback" not in done.stderr
    readme = (root / "report" / "README.md").read_text()
    footer = readme.split("### Left out: unreadable", 1)[1]
    assert "eval/scores.json" in footer and says in footer
    assert "rtn W2A16" not in readme.split("## Notes")[0] and "gptq W4A16-g128" in readme
    assert "1 left out as unreadable" in done.stdout


def test_push_to_a_local_folder_once_then_unchanged(grid):
    root, recipes = grid
    hub = root / "hub"
    from factory.core.hub import LocalFolder

    target = LocalFolder(hub)
    made = make_report(recipes, root, root / "report", target, log=lambda line: None)
    first = push_report(made.files, target, "tester/llama3-lowbit-report", log=lambda line: None)
    assert not first.skipped
    held = {p.name for p in (hub / "tester" / "llama3-lowbit-report").iterdir()}
    assert held == set(made.files)
    said = []
    again = make_report(recipes, root, root / "report", target, log=lambda line: None)
    second = push_report(again.files, target, "tester/llama3-lowbit-report", log=said.append)
    assert second.skipped and "unchanged" in said[0]
    # a changed figure is a new report
    fake_build(root, RECIPES / "rtn-2bit.yaml", LLAMA, scores_for(_paper_like(1800.0, 0.25)))
    third = push_report(make_report(recipes, root, root / "report", target, log=lambda line: None).files, target,
                        "tester/llama3-lowbit-report", log=lambda line: None)
    assert not third.skipped and third.fingerprint != first.fingerprint


def test_push_refuses_a_repo_that_holds_a_build(grid):
    root, recipes = grid
    build_repo = root / "hub" / "tester" / "a-build"
    build_repo.mkdir(parents=True)
    (build_repo / "README.md").write_text("---\nfactory:\n  fingerprint: abc\n---\n# a build\n")
    done = run_factory("report", *recipes, "--workdir", str(root), "--to", str(root / "hub"),
                       "--push", "tester/a-build")
    assert done.returncode == 2 and "not a factory report" in done.stderr
    assert (build_repo / "README.md").read_text().endswith("# a build\n")


def test_from_hub_reads_only_small_files(grid):
    """Publish the fake builds' small files as a local folder target holds them, then read them back."""
    root, recipes = grid
    from factory.core.hub import LocalFolder
    from factory.fleet.report_sources import from_target

    hub = root / "hub"
    for build_dir, repo in ((root / "builds/gptq-4bit/meta-llama--Meta-Llama-3-8B", "local/Meta-Llama-3-8B-gptq-4bit"),
                            (root / "builds/rtn-2bit/meta-llama--Meta-Llama-3-8B", "local/Meta-Llama-3-8B-rtn-2bit")):
        folder = hub / repo
        (folder / "evaluation").mkdir(parents=True)
        (folder / "README.md").write_text("---\nfactory:\n  fingerprint: abc\n---\n")
        shutil.copy(build_dir / "eval" / "scores.json", folder / "evaluation" / "scores.json")
        (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    target = LocalFolder(hub)
    read = []
    original = target.read_file
    target.read_file = lambda repo, path, revision: read.append(path) or original(repo, path, revision)
    found = from_target(recipes, root, target)
    assert {b.method for b in found.builds} == {"gptq", "rtn"}
    assert {b.source for b in found.builds} == {"local/Meta-Llama-3-8B-gptq-4bit", "local/Meta-Llama-3-8B-rtn-2bit"}
    assert next(b for b in found.builds if b.method == "gptq").size_bytes == 4096  # from the listing's sizes
    assert set(read) <= {"evaluation/scores.json", "evaluation/speed.json", "factory_build.json"}
    assert any("not published" in x.reason for x in found.left_out)  # BiLLM and the others: no repo


def test_card_links_the_report_and_collection_and_quotes_the_reports_paper_row(evaluated_build, tmp_path,
                                                                               monkeypatch):
    """The tiny build's card, with publish.report set and the tiny model standing in for LLaMA-3-8B (so the
    paper has a row): the links, and a 'this build' row whose cells are the report's cells."""
    from factory.pipeline.build import Build
    from factory.recipe import load_recipe, paper
    from factory.stages.card import card

    work, recipe_path = evaluated_build
    shutil.copytree(work / "builds", tmp_path / "builds")
    recipe_file = tmp_path / "rtn-4bit.yaml"
    recipe_file.write_text(recipe_path.read_text().replace("publish: {org: tester}",
                                                           "publish: {org: tester, report: tester/tiny-report}"))
    monkeypatch.setitem(paper.PAPER_MODELS, "test/tiny", "LLaMA3-8B")
    recipe = load_recipe(recipe_file)
    build = Build(recipe, recipe.models[0], tmp_path)
    scores_file = build.stage_dir("evaluate") / "scores.json"
    scores = json.loads(scores_file.read_text())
    scores["tasks"]["wikitext2_ppl"] = {"perplexity": {"base": 6.0, "quantized": 8.25, "recovery": 6 / 8.25,
                                                       "higher_is_better": False, "primary": True}}
    scores_file.write_text(json.dumps(scores))
    # the recipe's RTN W4A16-g32 has no paper row; the paper's RTN 4-bit g128 does: read the row for g128
    monkeypatch.setattr(paper, "paper_rows", lambda m, n, b, g, _rows=paper.paper_rows: _rows(m, n, b, 128))
    import factory.stages.paper_table as paper_table

    monkeypatch.setattr(paper_table, "paper_rows", paper.paper_rows)
    import factory.stages.card as card_module

    monkeypatch.setattr(card_module, "paper_rows", paper.paper_rows)
    text = (card(build, "tester/tiny-rtn-4bit").output / "README.md").read_text()
    assert "Part of the Collection **tiny low-bit (factory)**" in text
    assert "https://huggingface.co/collections/tester" in text and "(https://huggingface.co/tester/tiny-report)" in text
    row = next(line for line in text.splitlines() if line.startswith("| **this build**"))
    found = local([str(recipe_file)], tmp_path)
    report = build_report(found.builds, found.left_out)
    ours = next(r for r in report.tables[0].rows if r["build"] is not None)["cells"]["wikitext2_ppl"]
    theirs = paper.paper_rows("test/tiny", "RTN", "4", 32)["RTN W4A16-g128"]["wikitext2_ppl"]
    assert ours.paper == theirs and cell_text(ours) == f"8.25 / {theirs:.2f} ({'+' if 8.25 >= theirs else '-'}" \
        f"{abs(8.25 - theirs):.2f})"
    assert f"| {cell_text(ours)} |" in row and ", smoke |" in row


def test_rebuild_refreshes_the_report_and_collection_it_names(evaluated_build, tmp_path):
    work, recipe_path = evaluated_build
    shutil.copytree(work / "builds", tmp_path / "builds")
    recipe_file = tmp_path / "rtn-4bit.yaml"
    recipe_file.write_text(recipe_path.read_text().replace("publish: {org: tester}",
                                                           "publish: {org: tester, report: tester/tiny-report}"))
    hub = tmp_path / "hub"
    args = ("rebuild", str(recipe_file), "--workdir", str(tmp_path), "--to", str(hub))
    done = run_factory(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    report = hub / "tester" / "tiny-report"
    assert {"README.md", "report.csv", "report.json"} <= {p.name for p in report.iterdir()}
    data = json.loads((report / "report.json").read_text())
    assert [b["source"] for b in data["builds"]] == ["tester/tiny-rtn-4bit"]  # read back from the target
    collection = json.loads(next((hub / ".collections" / "tester").glob("*.json")).read_text())
    assert [i["id"] for i in collection["items"]] == ["tester/tiny-rtn-4bit", "tester/tiny-report"]
    card = (hub / "tester" / "tiny-rtn-4bit" / "README.md").read_text()
    assert "(https://huggingface.co/tester/tiny-report)" in card
    again = run_factory(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "report unchanged" in again.stdout + again.stderr and "unchanged (2 items)" in again.stdout + again.stderr


def test_an_infinite_perplexity_is_written_and_plotted(tmp_path):
    """A collapsed build (perplexity inf, as json writes Infinity): the report still renders, JSON stays JSON."""
    fake_build(tmp_path, RECIPES / "rtn-2bit.yaml", LLAMA, scores_for(_paper_like(float("inf"), 0.25)))
    fake_build(tmp_path, RECIPES / "gptq-4bit.yaml", LLAMA, scores_for(_paper_like(6.9, 0.66)))
    made = make_report([str(RECIPES / "rtn-2bit.yaml"), str(RECIPES / "gptq-4bit.yaml")], tmp_path,
                       tmp_path / "report", log=lambda line: None)
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert any(c["ours"] == "inf" and c["column"] == "wikitext2_ppl" for c in data["cells"])
    assert "| rtn W2A16-g128 | inf / 1,900 (+inf) |" in made.files["README.md"].read_text()
    assert "meta-llama--Meta-Llama-3-8B-ppl-vs-bits.png" in made.files


def test_gguf_effective_bits_come_from_the_file_size(tmp_path):
    fake_build(tmp_path, RECIPES / "gguf-q4km.yaml", LLAMA, scores_for(_paper_like(7.0, 0.65)),
               size_bytes=4_900_000_000, artifact={"base_size_bytes": 16_000_000_000})
    [build] = local([str(RECIPES / "gguf-q4km.yaml")], tmp_path).builds
    assert (build.effective_bits, build.effective_bits_source) == (pytest.approx(4.9), "file size")
    assert "4.90 (file size)" in markdown(build_report([build], []))
