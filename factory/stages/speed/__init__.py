"""The speed stage: a build's artifact -> builds/<recipe>/<model>/speed/speed.json.

Speed and memory of the build, and of its base model, in the runtime a user would run it with:
load time, weights held in memory, peak memory, and prefill and decode tokens/s at each batch size
of the recipe's `evaluation.speed` block (prompts of `prompt_tokens` random token ids, greedy
decoding of exactly `new_tokens` tokens).

Runtimes (`evaluation.speed.runtime`; `auto` picks the first that applies):
  llama.cpp     GGUF files at the top of the artifact folder (the hook for GGUF builds: any `*.gguf`
                there is measured as it is), through the xllamacpp binding (llama.cpp's own server,
                factory.engines.llama_cpp): batch B is B sequences decoded at once in B slots. The base model
                is measured in llama.cpp too, as an F16 GGUF written by the same converter
                (factory.stages.speed.base_gguf), and both are scored in llama.cpp on the held-out text:
                perplexity, KL divergence and top-1 agreement of the next-token distributions
                against the base, a greedy generation and a chat turn through the file's template.
  vllm          a checkpoint on a CUDA GPU, when vLLM is installed: it serves compressed-tensors
                checkpoints packed (W4A16 through its Marlin kernels)
  transformers  otherwise. transformers decompresses a compressed-tensors checkpoint into dense
                Linear layers when it loads it (`weights_in_memory: dense` below): no memory saving
                in this runtime; bitsandbytes checkpoints stay packed (uint8 parameters).

Asking for a runtime that is not installed (or vLLM without a GPU) is bad input: one line, exit 2.

Each measurement runs in a fresh Python process (`python -m factory.stages.speed.worker MEASUREMENT.json`), so
that its load time and peak memory are its own, not those of whatever ran before in this process.
The base model's figures depend only on its identity (model, revision, settings, runtime, device,
library versions) and are measured once per machine, cached in <FACTORY_CACHE>/base-speed/
(written aside and renamed into place, under a file lock, like the base evaluations of
factory.stages.evaluate.base_store).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from factory.core.cache import made_once
from factory.core.errors import UserError, first_line
from factory.core.paths import cache_root
from factory.core.tables import num, text_table
from factory.engines.base_models import fetch_base, slug, source_revision
from factory.engines.llama_cpp import LoadError, default_threads
from factory.pipeline.artifact import Artifact
from factory.pipeline.build import Build, StageResult, run_stage
from factory.pipeline.fingerprint import BASE_LIBRARIES, digest, library_versions
from factory.pipeline.stage import Options, Stage
from factory.stages.speed.base_gguf import base_gguf as f16_gguf  # (as: `speed.base_gguf` stays the module)
from factory.stages.speed.base_gguf import identity as gguf_identity
from factory.stages.speed.runtime_quality import quality_figures, score_request

if TYPE_CHECKING:
    from factory.recipe import Speed

SPEED_FILE = "speed.json"
SPEED_FORMAT = 2  # the layout of speed.json; part of every fingerprint and cache key
RUNTIMES = ("transformers", "vllm", "llama.cpp")
RUNTIME_PACKAGES = {"transformers": "transformers", "vllm": "vllm", "llama.cpp": "xllamacpp"}
RUNTIME_LIBRARIES = {"transformers": (), "vllm": ("vllm",), "llama.cpp": ("xllamacpp",)}
# What serves the weights packed, said in the card beside a runtime that decompresses them.
PACKED_RUNTIME = "vLLM (compressed-tensors W4A16/W8A16 through its Marlin kernels, W8A8 through its int8/fp8 kernels)"
WORKER_TIMEOUT_S = 6 * 3600
REPEATS = 2  # each figure is the best of this many runs


# ---------------------------------------------------------------- runtimes


def installed(runtime: str) -> bool:
    return importlib.util.find_spec(RUNTIME_PACKAGES[runtime]) is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def gguf_files(folder: Path) -> list[Path]:
    """The GGUF files a build holds at the top of its artifact folder (the hook for GGUF builds)."""
    return sorted(folder.glob("*.gguf")) if folder.is_dir() else []


def check_runtime(settings: "Speed") -> None:
    """Refuse, in one line, a runtime the recipe names that cannot run here (before any work)."""
    runtime = settings.runtime
    if runtime == "auto" or runtime == "transformers":
        return
    if not installed(runtime):
        package = {"vllm": "vllm (a GPU serving engine)", "llama.cpp": "xllamacpp, llama.cpp's binding"}[runtime]
        raise UserError(f"evaluation.speed.runtime: {runtime} is not installed here (package {package}); "
                        "use runtime: auto or transformers")
    if runtime == "vllm" and not cuda_available():
        raise UserError("evaluation.speed.runtime: vllm needs a CUDA GPU and none is visible here; "
                        "use runtime: auto or transformers")


def resolve_runtime(settings: "Speed", artifact: "Artifact") -> str:
    """The runtime that measures this artifact: the recipe's, or for `auto` the one a user would use."""
    check_runtime(settings)
    has_gguf = bool(gguf_files(artifact.path))
    if settings.runtime == "llama.cpp":
        if not has_gguf:
            raise UserError(f"evaluation.speed.runtime: llama.cpp runs GGUF files and {artifact.path} holds none")
        return "llama.cpp"
    if settings.runtime != "auto":
        return settings.runtime
    if has_gguf and installed("llama.cpp"):
        return "llama.cpp"
    if installed("vllm") and cuda_available() and artifact.whole_checkpoint:
        return "vllm"
    return "transformers"


def device_name(runtime: str = "transformers") -> str:
    """The accelerator (CUDA device name) or the CPU model and the threads the runtime uses."""
    import torch

    if torch.cuda.is_available() and runtime != "llama.cpp":  # the llama.cpp wheel in the lock is its CPU build
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if runtime == "llama.cpp":
        return f"CPU {cpu}, {default_threads()} threads"
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------- the stage


def speed_fingerprint(build: Build, runtime: str, device: str) -> str:
    return digest([build.fingerprint(), build.recipe.evaluation.speed.model_dump(mode="json"), runtime, device,
                   library_versions(BASE_LIBRARIES + RUNTIME_LIBRARIES[runtime]), SPEED_FORMAT])


def _resolved(build: Build) -> tuple["Speed", Artifact, str, str]:
    """The recipe's speed settings, the build's artifact, the runtime that measures it and the device."""
    settings = build.recipe.evaluation.speed
    if not settings.enabled:
        raise UserError(f"{build.label}: evaluation.speed.enabled is false in the recipe")
    check_runtime(settings)
    artifact = build.artifact()
    runtime = resolve_runtime(settings, artifact)
    return settings, artifact, runtime, device_name(runtime)


def fingerprint_of(build: Build) -> str:
    """The speed stage's fingerprint for this build, on this machine's runtime and device."""
    _, _, runtime, device = _resolved(build)
    return speed_fingerprint(build, runtime, device)


def measure(build: Build, out: Path, log=print) -> dict:
    """The speed stage's work: the build and (once per machine) its base model; out/speed.json."""
    settings, artifact, runtime, device = _resolved(build)
    log(f"  speed: measuring the build in {runtime} on {device}")
    measured = run_measurement(runtime, build.entry.kind, artifact, settings)
    base, source = base_speed(build, runtime, device, log)
    result = {"format": SPEED_FORMAT, "runtime": runtime, "device": device,
              "settings": settings.model_dump(mode="json"), "repeats": REPEATS,
              "prompt": "random token ids, greedy decoding",
              "libraries": library_versions(BASE_LIBRARIES + RUNTIME_LIBRARIES[runtime]),
              "build": measured, "base": base, "base_source": source,
              "served_as": served_as(runtime, artifact, measured)}
    if runtime == "llama.cpp":
        log("  speed: scoring the build against the base's F16 GGUF in llama.cpp")
        base_scores = base_score(build, device, log)
        scores = run_measurement(runtime, build.entry.kind, artifact, settings, task=score_request(build, artifact))
        result["runtime_quality"] = quality_figures(scores, base_scores, settings.quality)
    result["weights_note"] = weights_note(result)
    (out / SPEED_FILE).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return {"runtime": runtime, "speed_device": device}


def speed(build: Build, log=print) -> StageResult:
    """Measure the build and (once per machine) its base model; speed/speed.json."""
    return run_stage(build, "speed", lambda out: measure(build, out, log), fingerprint_of(build))


def base_artifact(build: Build, runtime: str, log=print) -> "Artifact":
    """The base model as the runtime loads it: its checkpoint, or for llama.cpp its F16 GGUF."""
    if runtime == "llama.cpp":
        return Artifact("gguf", f16_gguf(build.entry, build.recipe_dir, log).parent)
    return Artifact("checkpoint", fetch_base(build.entry, build.recipe_dir).path)


def _base_cached(build: Build, what: str, identity: dict, measure, log=print) -> tuple[dict, str]:
    """`what` (a JSON file) of the base model, from this machine's cache or measured once and cached."""
    target = cache_root() / "base-speed" / slug(build.entry.id) / digest(identity)
    found = target / what

    def make(partial: Path) -> str:
        log(f"  speed: measuring the base model once in {identity['runtime']} (cached in {target})")
        measured = measure()
        (partial / "identity.json").write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")
        (partial / what).write_text(json.dumps(measured, indent=2, sort_keys=True) + "\n")
        return "measured"

    if found.is_file():
        log(f"  speed: reusing the base model's {'figures' if what == SPEED_FILE else 'llama.cpp scores'} from {target}")
    source = made_once("base-speed", target, lambda t: (t / what).is_file(), make)
    return json.loads(found.read_text()), ("cache" if source == "waited" else source)


def _base_identity(build: Build, runtime: str, device: str, settings: dict) -> dict:
    identity = {"model": build.entry.id, "revision": source_revision(build.entry, build.recipe_dir),
                "kind": build.entry.kind, "settings": settings, "runtime": runtime, "device": device,
                "libraries": library_versions(BASE_LIBRARIES + RUNTIME_LIBRARIES[runtime]), "format": SPEED_FORMAT}
    if runtime == "llama.cpp":
        identity["gguf"] = gguf_identity(build.entry, build.recipe_dir)
    return identity


def base_speed(build: Build, runtime: str, device: str, log=print) -> tuple[dict, str]:
    """The base model's speed figures in the same runtime, measured once per machine."""
    settings = build.recipe.evaluation.speed
    identity = _base_identity(build, runtime, device,
                              settings.model_dump(mode="json", exclude={"runtime", "enabled", "quality"}))
    return _base_cached(build, SPEED_FILE, identity, lambda: run_measurement(
        runtime, build.entry.kind, base_artifact(build, runtime, log), settings), log)


def base_score(build: Build, device: str, log=print) -> dict:
    """The base F16 GGUF's teacher-forced figures in llama.cpp (factory.stages.speed.runtime_quality), measured once."""
    quality = build.recipe.evaluation.speed.quality
    identity = _base_identity(build, "llama.cpp", device, {"quality": quality.model_dump(mode="json")})

    def measure() -> dict:
        base = base_artifact(build, "llama.cpp", log)
        return run_measurement("llama.cpp", build.entry.kind, base, build.recipe.evaluation.speed,
                               task=score_request(build, base))

    return _base_cached(build, "score.json", identity, measure, log)[0]


def served_as(runtime: str, artifact: "Artifact", measured: dict) -> str:
    """How the measured build was loaded, in the card's words."""
    if runtime == "llama.cpp":
        return f"the GGUF file in llama.cpp ({measured.get('binding')}), weights packed"
    if artifact.served_as():
        return artifact.served_as()
    if measured.get("weights_in_memory") == "dense" and measured.get("quantized_checkpoint"):
        return f"{runtime}, decompressed on load (dense weights; {PACKED_RUNTIME} serves it packed: not measured here)"
    return runtime


def weights_note(result: dict) -> str:
    """What the card says about the weights in memory in this runtime, from what was measured."""
    build, runtime = result["build"], result["runtime"]
    if build.get("weights_in_memory") == "dense" and build.get("quantized_checkpoint"):
        at_load, running = build.get("weights_at_load_mb"), build.get("weights_mb")
        when = ("on the first forward pass (they are packed right after loading)"
                if at_load and running and at_load < 0.9 * running else "when it loads them")
        return (f"{runtime} decompresses this checkpoint's weights {when}: they are held as dense "
                f"{build.get('dtype')} layers, so in {runtime} the build saves no memory over the base model "
                f"(and runs no faster). {PACKED_RUNTIME} serves them packed.")
    if build.get("weights_in_memory") == "packed":
        return f"{runtime} holds the weights packed in memory, as they are stored."
    if runtime == "vllm":
        return "vLLM serves the weights packed; its memory figure includes the KV cache it reserves."
    return f"The weights are not quantized in storage; {runtime} holds them as dense {build.get('dtype')} layers."


# ---------------------------------------------------------------- one measurement, in its own process


def run_measurement(runtime: str, kind: str, artifact: "Artifact", settings: "Speed", task: dict | None = None) -> dict:
    """Measure one model in a fresh Python process; its figures (see `measure_in_process`). `task`: a
    scoring request for llama.cpp (factory.stages.speed.runtime_quality) instead of the speed measurement."""
    import tempfile

    request = {"runtime": runtime, "kind": kind, "artifact": {"kind": artifact.kind, "path": str(artifact.path),
               "base_path": str(artifact.base_path) if artifact.base_path else None,
               "base_quantization": artifact.base_quantization},
               "settings": settings.model_dump(mode="json"), "task": task}
    with tempfile.TemporaryDirectory(prefix="factory-speed-") as tmp:
        request_file, result_file = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request_file.write_text(json.dumps(request))
        done = subprocess.run([sys.executable, "-m", "factory.stages.speed.worker", str(request_file), str(result_file)],
                              capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=os.environ.copy())
        if done.returncode != 0 or not result_file.is_file():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit {done.returncode}"
            if "LoadError: " in last:  # llama.cpp refused the file: its own reason, and the file's name

                raise LoadError(first_line(last.split("LoadError: ", 1)[1]))
            raise RuntimeError(f"the {runtime} {'scoring' if task else 'speed measurement'} of {artifact.path} "
                               f"failed: {first_line(last)}")
        return json.loads(result_file.read_text())


class SpeedStage(Stage):
    name = "speed"
    help = "speed and memory of each build and its base model in the runtime a user would use"
    output = "speed"
    needs = {"artifact": ""}
    missing = "not measured for speed yet"

    def applies(self, build: Build) -> bool:
        return build.recipe.evaluation.speed.enabled

    def preflight(self, build: Build, options: Options) -> None:
        check_runtime(build.recipe.evaluation.speed)  # a runtime that is not installed: one line, before any work

    def fingerprint(self, build: Build, options: Options) -> str:
        return fingerprint_of(build)

    def work(self, build: Build, out: Path, options: Options) -> dict:
        return measure(build, out, options.log)

    def lines(self, build: Build, result: StageResult, options: Options) -> list[str]:
        figures = json.loads((result.output / SPEED_FILE).read_text())
        out = [f"  skipped: {result.output} is already measured with these settings"] if result.skipped else []
        rows = [("model", "batch", "prefill tok/s", "decode tok/s", "load s", "weights MB", "peak RSS MB")]
        for who in ("build", "base"):
            f = figures[who]
            for b in f["batches"]:
                rows.append((who, str(b["batch_size"]), num(b.get("prefill_tokens_per_s"), "{:.1f}"),
                             num(b.get("decode_tokens_per_s"), "{:.1f}"), num(f.get("load_s"), "{:.2f}"),
                             num(f.get("weights_mb"), "{:.1f}"), num(f.get("peak_rss_mb"), "{:.0f}")))
        return [*out, f"  runtime {figures['runtime']} on {figures['device']}", text_table(rows),
                f"  note: {figures['weights_note']}", f"  figures: {result.output / SPEED_FILE}"]

    def published(self, build: Build, result: StageResult) -> str:
        return "  speed: " + ("reused the finished measurement" if result.skipped
                              else f"measured in {result.record.get('runtime')}")
