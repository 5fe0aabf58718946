"""The card stage: a build's model/ and eval/ -> builds/<recipe>/<model>/card/ (README.md + plots).

The card is rendered from the Jinja2 template in model_cards/ through huggingface_hub's
ModelCard.from_template, so its front matter is what the Hub reads: base_model with
`base_model_relation: quantized`, license, tags, the scores as `model-index`, and a `factory`
block with the build's fingerprint (what `factory plan` and `factory push` compare). The
rendered card is parsed back with ModelCard/ModelCardData before it is accepted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from factory.core.code_digest import code_digest
from factory.core.collection_title import title_for
from factory.core.errors import UserError
from factory.core.hub_files import card_metadata
from factory.core.paths import TEMPLATES_DIR
from factory.core.plots import pyplot, save
from factory.core.tables import num, text_table
from factory.engines.base_models import slug
from factory.engines.lora.train import LOSS_PNG
from factory.pipeline.artifact import KINDS
from factory.pipeline.build import Build, StageResult, run_stage
from factory.pipeline.fingerprint import digest, factory_metadata, publish_fingerprint
from factory.pipeline.manifest import MANIFEST, Manifest
from factory.pipeline.stage import Options, Stage
from factory.recipe import PER_CHANNEL, Settings
from factory.recipe.paper import CITATION, PAPER_MODELS, lora_ft_rows, paper_rows
from factory.recipe.tasks import display_name
from factory.stages.figures import figures_for
from factory.stages.paper_table import paper_cells
from factory.stages.push import repo_for

TEMPLATES = TEMPLATES_DIR
# The code the card's files are made of, hashed into its fingerprint: this module (the text, the plots), the
# paper row it quotes (the report's cells for this build), the record that row is computed from, the
# Collection title it links to, and the plots' matplotlib settings.
CARD_CODE = ("factory.stages.card", "factory.stages.paper_table", "factory.stages.figures",
             "factory.core.collection_title", "factory.core.plots")
TEMPLATE = "model_card.md.j2"
CARD_FILE = "README.md"
RECOVERY_PLOT = "recovery.png"
COMPARISON_PLOT = "comparison.png"
# What the build is, in one small published file (the report reads it back from the Hub without the weights).
BUILD_FILE = "factory_build.json"
BUILD_FIGURES = ("format", "engine", "size_bytes", "base_size_bytes", "compression_ratio", "effective_bits",
                 "paper_bits", "quantized_linears")
PIPELINE_TAGS = {"causal-lm": "text-generation", "llava-next": "image-text-to-text"}


@dataclass(frozen=True)
class Sibling:
    """Another recipe's evaluated build of the same base model, for the comparison."""

    recipe: str
    scheme: str
    mean_recovery: float | None
    size_bytes: int | None


def card(build: Build, repo_id: str) -> StageResult:
    """Render the card for `repo_id`, or skip when nothing it shows has changed."""
    return run_stage(build, "card", lambda out: write_card(build, repo_id, out), card_fingerprint(build, repo_id))


def _speed_file(build: Build) -> Path | None:
    """The speed stage's figures, where it finished (the card shows them)."""
    record, path = build.manifest().stage("speed"), build.stage_dir("speed") / "speed.json"
    return path if record is not None and record.status == "done" and path.is_file() else None


def card_fingerprint(build: Build, repo_id: str) -> str:
    """Everything the card shows: the build, its scores and speed, gates, siblings, template and code."""
    manifest = build.manifest()
    template = TEMPLATES / TEMPLATE
    if not template.is_file():
        raise UserError(f"model card template missing: {template}")
    return digest({
        "build": build.fingerprint(),
        "evaluation": manifest.stages["evaluate"].fingerprint,
        "speed": manifest.stage("speed").fingerprint if _speed_file(build) else None,
        "gates": manifest.gates.model_dump() if manifest.gates else None,
        "repo_id": repo_id,
        "siblings": [s.__dict__ for s in find_siblings(build)],
        "template": _template_digest(template),
        "recipe_text": _recipe_text(build),
        # the card's code (CARD_CODE: the paper row it shares with the report, the Collection it links to):
        # their syntax trees, so moving a module does not re-render every card
        "code": code_digest(CARD_CODE),
    })


def write_card(build: Build, repo_id: str, out: Path) -> dict:
    """The card stage's work: README.md, its plots and build.json in `out`; the manifest's figures."""
    siblings = find_siblings(build)
    scores = json.loads((build.stage_dir("evaluate") / "scores.json").read_text())
    plot_recovery(scores, out / RECOVERY_PLOT)
    loss_plot = build.model_dir / LOSS_PNG
    if loss_plot.is_file():  # fine-tuning builds: the training loss curve
        shutil.copyfile(loss_plot, out / LOSS_PNG)
    if siblings:
        plot_comparison(build, scores, siblings, out / COMPARISON_PLOT)
    speed_file = _speed_file(build)
    speed = json.loads(speed_file.read_text()) if speed_file else None
    text = render(build, repo_id, scores, siblings, speed)
    check_card(text)
    (out / CARD_FILE).write_text(text, encoding="utf-8")
    (out / BUILD_FILE).write_text(json.dumps(build_record(build), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {"repo_id": repo_id, "siblings": [s.recipe for s in siblings]}


def render(build: Build, repo_id: str, scores: dict, siblings: list[Sibling], speed: dict | None = None) -> str:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    s, entry = build.settings, build.entry
    manifest = build.manifest()
    stage = manifest.stages[build.artifact_stage]
    facts = build.method.card_facts(s)
    kind_task = PIPELINE_TAGS[entry.kind]
    rows = score_rows(scores)
    eval_results = [
        EvalResult(task_type=kind_task, dataset_type=row["task"], dataset_name=row["pretty"],
                   metric_type=row["metric"], metric_value=round(row["quantized"], 4),
                   metric_name=row["metric"] + (" (smoke evaluation)" if scores.get("smoke") else ""))
        for row in rows if row["quantized"] is not None
    ]
    tags = list(dict.fromkeys([s.method, f"{s.bits}-bit", s.scheme_label.lower(), "quantized", "factory", *facts.tags,
                               *(["llava-next"] if entry.kind == "llava-next" else [])]))
    data = ModelCardData(
        base_model=entry.id, library_name=facts.library_name, pipeline_tag=kind_task, license=base_license(build),
        tags=tags, model_name=repo_id.split("/")[-1], eval_results=eval_results or None,
        base_model_relation=facts.base_model_relation,
        factory=factory_metadata(build),
    )
    context = {
        "repo_id": repo_id, "recipe": build.recipe, "entry": entry, "s": s, "stage": stage,
        "scores": scores, "rows": rows, "siblings": siblings, "facts": facts,
        "serve_note": facts.serve_note.replace("{repo_id}", repo_id),
        "group": "per-channel" if s.group_size == PER_CHANNEL else s.group_size,
        "warning": paper_warning(s.bits, entry.kind), "gate_failures": manifest.gates.failures if manifest.gates else [],
        "paper": paper_rows(entry.id, build.method.paper_name, build.method.paper_bits_label(s), s.group_size),
        "recipe_text": _recipe_text(build), "reproduce": f"factory publish {_recipe_arg(build)} --model {entry.id}",
        "libraries": {**build.fingerprint_inputs["libraries"], "lm-eval/lmms-eval": scores.get("harness", {}).get("harness_version")},
        "fingerprint": publish_fingerprint(build), "citation": CITATION, "pct": _pct, "mb": _mb,
        "recovery_plot": RECOVERY_PLOT, "comparison_plot": COMPARISON_PLOT,
        "speed": speed, "speed_rows": speed_rows(speed) if speed else [],
        "num": lambda v: "-" if v is None else f"{v:,.1f}", "sec": lambda v: "-" if v is None else f"{v:.2f} s",
        "mbv": lambda v: "-" if v is None else f"{v:,.0f} MB",
        "headline": facts.headline or f"{s.method.upper()} {s.scheme_label} quantization",
        "usage_part": KINDS[build.method.artifact_kind].card_usage,
        "ft": s.finetune, "lora_ft": lora_ft_rows(entry.id, build.method.paper_name) if s.finetune else None,
        "loss_plot": LOSS_PNG,
        "has_nf4": any(r["nf4"] is not None for r in rows),
        "links": study_links(build, repo_id),
        "ours_in_paper": _ours_in_paper(build, scores, speed, repo_id),
    }
    # ModelCard.from_template's plain jinja2.Template keeps a blank line per {% %} line, which
    # breaks Markdown tables; the same rendering with trim_blocks does not.
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return str(ModelCard(env.get_template(TEMPLATE).render(card_data=data.to_yaml(), **context)))


def study_links(build: Build, repo_id: str) -> dict | None:
    """The report repo and the base model's Collection, where the recipe names a report (publish.report)."""
    report = build.recipe.publish.report
    if not report:
        return None
    return {"report": report, "collection": title_for(build.entry.id), "namespace": repo_id.split("/")[0]}


def _ours_in_paper(build: Build, scores: dict, speed: dict | None, repo_id: str) -> list[str] | None:
    if build.entry.id not in PAPER_MODELS or build.method.paper_name is None:
        return None  # a model or method the paper did not measure: no row to quote
    return paper_cells(figures_for(build, scores, speed, repo_id))


def build_record(build: Build) -> dict:
    """factory_build.json: the recipe, the settings it was built with and the artifact's figures (no paths)."""
    manifest = build.manifest()
    record = manifest.stages[build.artifact_stage]
    return {"recipe": build.recipe.name, "model": build.entry.id, "artifact_stage": build.artifact_stage,
            "settings": (manifest.fingerprint_inputs or {}).get("settings"),
            "artifact": {name: record.get(name) for name in BUILD_FIGURES if record.get(name) is not None}}


def speed_rows(speed: dict) -> list[dict]:
    """One row per (model, batch size) of speed.json, build first; None where not measured."""
    rows = []
    base_decode = {b["batch_size"]: b.get("decode_tokens_per_s") for b in (speed.get("base") or {}).get("batches", [])}
    for who in ("build", "base"):
        figures = speed.get(who) or {}
        for batch in figures.get("batches", []):
            ours, theirs = batch.get("decode_tokens_per_s"), base_decode.get(batch["batch_size"])
            rows.append({"who": "this build" if who == "build" else "base model", "batch": batch["batch_size"],
                         "prefill": batch.get("prefill_tokens_per_s"), "decode": batch.get("decode_tokens_per_s"),
                         "load_s": figures.get("load_s"), "weights_mb": figures.get("weights_mb"),
                         "peak_rss_mb": figures.get("peak_rss_mb"), "peak_gpu_mb": figures.get("peak_gpu_mb"),
                         "memory": figures.get("weights_in_memory"),
                         "ratio": ours / theirs if who == "build" and ours and theirs else None})
    return rows


def check_card(text: str) -> None:
    """Parse the rendered card back as the Hub's client does; metadata errors fail the stage."""
    from huggingface_hub import ModelCard

    try:
        parsed = ModelCard(text)  # raises on YAML or model-index errors
    except ValueError as exc:
        raise RuntimeError(f"rendered model card has invalid metadata: {exc}") from None
    data = parsed.data
    missing = [k for k in ("base_model", "base_model_relation", "license", "library_name", "pipeline_tag", "tags")
               if not getattr(data, k, None) and not data.to_dict().get(k)]
    if missing:
        raise RuntimeError(f"rendered model card lacks {', '.join(missing)}")
    if data.to_dict().get("factory", {}).get("fingerprint") is None:
        raise RuntimeError("rendered model card lacks the factory fingerprint")


def score_rows(scores: dict) -> list[dict]:
    rows = []
    for task, metrics in sorted(scores["tasks"].items()):
        for metric, row in metrics.items():
            if row["primary"]:
                nf4 = scores.get("nf4_reference", {}).get("tasks", {}).get(task, {}).get(metric, {}).get("quantized")
                rows.append({"task": task, "pretty": display_name(task), "metric": metric, "nf4": nf4, **row})
    return rows


def score_table(scores: dict) -> str:
    """The scores as the console shows them (evaluate, publish)."""
    rows = [("task", "metric", "base", "quantized", "recovery")]
    rows += [(r["task"], r["metric"], num(r["base"]), num(r["quantized"]), num(r["recovery"], "{:.3f}"))
             for r in score_rows(scores)]
    mean = scores.get("mean_recovery")
    note = " (smoke evaluation: bundled sets, not benchmark figures)" if scores.get("smoke") else ""
    loaded = scores.get("harness", {}).get("loaded_as")
    loaded = f"\nevaluated as: {loaded}" if loaded else ""
    return text_table(rows) + f"\nmean recovery: {num(mean, '{:.3f}')}{note}{loaded}"


def paper_warning(bits: int, kind: str) -> str | None:
    """What Huang et al. 2024 found at this bit width, where it is a warning."""
    if bits == 3:
        return ("Huang et al. 2024 found a clear loss at 3 bits for every post-training method on LLaMA-3 "
                "(for LLaVA-Next-8B, 5-20% on multimodal tasks). Check the scores below before using it.")
    if bits <= 2:
        extra = " and to 0 on all multimodal tasks for LLaVA-Next-8B" if kind == "llava-next" else ""
        return ("Huang et al. 2024 found that LLaMA-3 collapses at 2 bits with these methods (perplexity "
                f"in the hundreds or thousands{extra}). This build exists to reproduce that row, not for use.")
    return None


def base_license(build: Build) -> str:
    """The recipe's license for the base model, else the base model's own card on disk, else 'other'."""
    if build.entry.license:
        return build.entry.license
    record = build.manifest().stage(build.artifact_stage)
    base_path = record.get("base_model_path") if record else None
    readme = Path(base_path) / "README.md" if base_path else None
    if readme and readme.is_file():
        license_name = card_metadata(readme.read_text(encoding="utf-8", errors="replace")).get("license")
        if isinstance(license_name, str):
            return license_name
    return "other"


def find_siblings(build: Build) -> list[Sibling]:
    """Other recipes' evaluated builds of the same model in this workdir."""
    found = []
    for scores_path in sorted((build.root / "builds").glob(f"*/{slug(build.entry.id)}/eval/scores.json")):
        build_dir = scores_path.parent.parent
        if build_dir == build.dir:
            continue

        manifest = Manifest.read(build_dir / MANIFEST)
        try:
            scores = json.loads(scores_path.read_text())
            settings = Settings.model_validate(manifest.fingerprint_inputs["settings"])
            label = settings.scheme_label
        except (OSError, ValueError, KeyError, TypeError, UserError):
            continue  # a half-written or foreign folder (or one of a method not known here) is no sibling
        artifact = manifest.stage("finetune") or manifest.stage("quantize")
        found.append(Sibling(manifest.recipe or build_dir.parent.name, label, scores.get("mean_recovery"),
                             artifact.get("size_bytes") if artifact else None))
    return found


# ---------------------------------------------------------------- plots


def plot_recovery(scores: dict, path: Path) -> None:
    plt = pyplot()
    rows = [r for r in score_rows(scores) if r["recovery"] is not None]
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(rows), 2) + 1.4))
    names = [f"{r['task']} ({r['metric']})" for r in rows]  # the card's table has the long names
    values = [r["recovery"] for r in rows]
    ax.barh(names, values, color=["#3b7dd8" if v >= 0.95 else "#e69f00" if v >= 0.8 else "#d55e00" for v in values])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("recovery (1.0 = the base model's score)")
    ax.set_xlim(0, max([1.05, *values]) * 1.05)
    ax.invert_yaxis()
    ax.set_title("Per-task recovery" + (" (smoke evaluation)" if scores.get("smoke") else ""))
    save(fig, path)


def plot_comparison(build: Build, scores: dict, siblings: list[Sibling], path: Path) -> None:
    plt = pyplot()
    entries = [(f"{build.recipe.name} (this)", scores.get("mean_recovery"))] + [
        (s.recipe, s.mean_recovery) for s in siblings]
    entries = [(name, value) for name, value in entries if value is not None]
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(entries), 2) + 1.4))
    ax.barh([n for n, _ in entries], [v for _, v in entries],
            color=["#3b7dd8" if i == 0 else "#999999" for i in range(len(entries))])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("mean recovery")
    ax.invert_yaxis()
    ax.set_title(f"Builds of {build.entry.id}")
    save(fig, path)


# ---------------------------------------------------------------- small helpers


def _template_digest(template: Path) -> str:
    """The template and every part it may include (model_cards/parts/), by content."""
    files = [template, *sorted((template.parent / "parts").glob("*.j2"))]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def _recipe_text(build: Build) -> str:
    source = build.recipe.source_path
    if source and source.is_file():
        return source.read_text(encoding="utf-8")
    return yaml.safe_dump(build.recipe.model_dump(mode="json", exclude_none=True, by_alias=True), sort_keys=False)


def _recipe_arg(build: Build) -> str:
    return str(build.recipe.source_path or build.recipe.name)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _mb(size) -> str:
    if not size:
        return "-"
    return f"{size / 2**30:.2f} GB" if size >= 2**30 else f"{size / 2**20:.1f} MB"


class CardStage(Stage):
    name = "card"
    help = "render the model card of each evaluated build"
    output = "card"
    needs = {"artifact": "", "evaluate": "a card needs scores"}
    missing = "no model card yet"
    target_options = "read"  # the card names the repo it is published as

    def preflight(self, build: Build, options: Options) -> None:
        repo_for(build, options)  # a repo name the Hub would refuse: one line, before any work

    def fingerprint(self, build: Build, options: Options) -> str:
        return card_fingerprint(build, repo_for(build, options))

    def work(self, build: Build, out: Path, options: Options) -> dict:
        return write_card(build, repo_for(build, options), out)

    def header(self, build: Build, options: Options) -> None:
        return None

    def lines(self, build: Build, result: StageResult, options: Options) -> list[str]:
        note = " (unchanged)" if result.skipped else ""
        return [f"card {build.recipe.name} / {build.entry.id}: {result.output / 'README.md'}{note}"]

    def published(self, build: Build, result: StageResult) -> str:
        return f"  card: {result.output / 'README.md'}" + (" (unchanged)" if result.skipped else "")
