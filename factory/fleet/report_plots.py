"""The report's plots, one set per base model, as PNG (matplotlib, no display; same input, same bytes):

- perplexity against bits, one line per method, log scale (the paper's figures dashed beside ours), so
  the collapse at 2 bits shows at a glance;
- a recovery heatmap, method x bits (mean recovery);
- quality (mean recovery) against size on disk, the Pareto frontier marked;
- decode tokens/s against size, where speed was measured.
"""

from __future__ import annotations

from pathlib import Path

from factory.core.plots import pyplot, save
from factory.engines.base_models import slug
from factory.fleet.report import Report
from factory.stages.figures import BuildFigures, bits_of, primary
from factory.stages.paper_table import PTQ_COLUMNS, Table, paper_row

PERPLEXITY_TASKS = [c.task for c in PTQ_COLUMNS[:3]]  # WikiText2, C4, PTB: the paper's order


def perplexity_task(builds: list[BuildFigures]) -> str | None:
    """The perplexity the plot shows: the first of the paper's sets measured, else a perplexity-like task."""
    tasks = {t for b in builds for t in b.scores["tasks"]}
    for task in PERPLEXITY_TASKS:
        if task in tasks:
            return task
    lower = sorted(t for t in tasks if any(primary(b.scores, t) and not primary(b.scores, t)["higher_is_better"]
                                           for b in builds))
    return lower[0] if lower else None


def write_plots(report: Report, out: Path) -> dict[str, list[str]]:
    """Every plot of the report into `out`; {base model: [file names]}."""
    written: dict[str, list[str]] = {}
    for model in sorted({b.model for b in report.builds}):
        builds = [b for b in report.builds if b.model == model and not b.finetune]
        names = []
        for suffix, plot in (("ppl-vs-bits", plot_perplexity), ("recovery-heatmap", plot_heatmap),
                             ("quality-vs-size", plot_quality_size), ("speed-vs-size", plot_speed_size)):
            name = f"{slug(model)}-{suffix}.png"
            if plot(model, builds, out / name):
                names.append(name)
        written[model] = names
    report.plots = written
    return written


def _series(builds: list[BuildFigures]) -> dict[str, list[BuildFigures]]:
    methods: dict[str, list[BuildFigures]] = {}
    for build in sorted(builds, key=lambda b: (b.method, bits_of(b))):
        methods.setdefault(build.method, []).append(build)
    return methods


def _smoke(builds: list[BuildFigures]) -> str:
    return " (smoke evaluation)" if any(b.smoke for b in builds) else ""


def plot_perplexity(model: str, builds: list[BuildFigures], path: Path) -> bool:
    task = perplexity_task(builds)
    if task is None:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    column = next((c for c in PTQ_COLUMNS if c.task == task), None)
    table = Table("ptq", "", model, [])
    for index, (method, members) in enumerate(_series(builds).items()):
        points = [(bits_of(b), primary(b.scores, task)["quantized"]) for b in members if primary(b.scores, task)]
        points = [(x, y) for x, y in points if y and 0 < y < float("inf")]
        if not points:
            continue
        color = f"C{index % 10}"
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", color=color, label=method)
        if column is not None:  # the paper's figure for the same setting, dashed
            paper = [(bits_of(b), (paper_row(table, b) or {}).get(column.paper_key)) for b in members]
            paper = [(x, y) for x, y in paper if y]
            if paper:
                ax.plot([x for x, _ in paper], [y for _, y in paper], marker="x", linestyle="--", color=color,
                        label=f"{method} (paper)")
    base = [primary(b.scores, task)["base"] for b in builds if primary(b.scores, task)]
    if base and base[0]:
        ax.axhline(base[0], color="black", linewidth=0.8, linestyle=":", label="base model")
    ax.set_yscale("log")
    ax.set_xlabel("weight bits")
    ax.set_ylabel(f"{task} perplexity (log scale)")
    ax.set_title(f"{model}: perplexity against bits{_smoke(builds)}")
    ax.legend(fontsize="small")
    save(fig, path)
    return True


def plot_heatmap(model: str, builds: list[BuildFigures], path: Path) -> bool:
    cells = {}
    for build in builds:
        if build.mean_recovery is not None:
            cells.setdefault((build.method, bits_of(build)), build.mean_recovery)
    if not cells:
        return False
    methods = sorted({m for m, _ in cells})
    bits = sorted({b for _, b in cells})
    import numpy as np

    grid = np.full((len(methods), len(bits)), np.nan)
    for (method, b), value in cells.items():
        grid[methods.index(method), bits.index(b)] = value
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(bits) + 3, 0.5 * len(methods) + 1.8))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(bits)), [f"{b:g}" for b in bits])
    ax.set_yticks(range(len(methods)), methods)
    ax.set_xlabel("weight bits")
    for i in range(len(methods)):
        for j in range(len(bits)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize="small")
    fig.colorbar(image, ax=ax, label="mean recovery")
    ax.set_title(f"{model}: mean recovery{_smoke(builds)}")
    save(fig, path)
    return True


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both size (smaller) and quality (higher), smallest first."""
    frontier, best = [], float("-inf")
    for size, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if quality > best:
            frontier.append((size, quality))
            best = quality
    return frontier


def _scatter(model: str, builds: list[BuildFigures], y, ylabel: str, title: str, path: Path,
             frontier: bool) -> bool:
    points = [(b.size_bytes / 1e9, y(b), f"{b.method} {bits_of(b):g}b") for b in builds
              if b.size_bytes and y(b) is not None and abs(y(b)) < float("inf")]
    if not points:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="#3b7dd8")
    for x, value, label in points:
        ax.annotate(label, (x, value), textcoords="offset points", xytext=(4, 3), fontsize="x-small")
    if frontier:
        line = pareto([(x, value) for x, value, _ in points])
        ax.step([p[0] for p in line], [p[1] for p in line], where="post", color="#d55e00", marker="o",
                markerfacecolor="none", markersize=10, label="Pareto frontier")
        ax.legend(fontsize="small")
    ax.set_xlabel("size on disk (GB)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    save(fig, path)
    return True


def plot_quality_size(model: str, builds: list[BuildFigures], path: Path) -> bool:
    return _scatter(model, builds, lambda b: b.mean_recovery, "mean recovery",
                    f"{model}: quality against size{_smoke(builds)}", path, frontier=True)


def plot_speed_size(model: str, builds: list[BuildFigures], path: Path) -> bool:
    runtimes = sorted({b.speed_runtime for b in builds if b.decode_tokens_per_s is not None and b.speed_runtime})
    return _scatter(model, builds, lambda b: b.decode_tokens_per_s, "decode tokens/s (batch 1)",
                    f"{model}: decode speed against size ({', '.join(runtimes) or 'not measured'})", path,
                    frontier=False)
