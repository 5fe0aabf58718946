"""The published figures of Huang et al. 2024 (arXiv 2404.14047), for printing beside our own."""

from __future__ import annotations

import csv

from factory.core.paths import DATA_DIR

PTQ_TABLE = DATA_DIR / "huang2024_llama3_ptq.csv"
LORA_FT_TABLE = DATA_DIR / "huang2024_llama3_lora_ft.csv"
LORA_FT_COLUMNS = ("mmlu_humanities", "mmlu_stem", "mmlu_social", "mmlu_other", "mmlu_avg", "piqa", "arc_e", "arc_c",
                   "hellaswag", "winogrande", "avg")
# Base models the paper measured, by the name its tables use.
PAPER_MODELS = {"meta-llama/Meta-Llama-3-8B": "LLaMA3-8B", "meta-llama/Meta-Llama-3-70B": "LLaMA3-70B"}
COLUMNS = ("wikitext2_ppl", "c4_ppl", "ptb_ppl", "piqa", "arc_e", "arc_c", "hellaswag", "winogrande", "avg")
CITATION = """@article{huang2024good,
  title   = {How Good Are Low-bit Quantized LLaMA3 Models? An Empirical Study},
  author  = {Huang, Wei and Ma, Xudong and Qin, Haotong and Zheng, Xingyu and Lv, Chengtao and
             Chen, Hong and Luo, Jie and Qi, Xiaojuan and Liu, Xianglong and Magno, Michele},
  journal = {arXiv preprint arXiv:2404.14047},
  year    = {2024}
}"""


def paper_rows(model_id: str, name: str | None, bits: str, group_size) -> dict[str, dict[str, float]] | None:
    """{'FP16': {...}, 'GPTQ W4A16-g128': {...}} for a model and setting the paper measured, else None.
    `name` is the method's name in the paper's tables, `bits` its bit width as they write it ("4", "1.7")."""
    model = PAPER_MODELS.get(model_id)
    if model is None or name is None:
        return None
    group = "" if group_size == "per-channel" else str(group_size)
    found: dict[str, dict[str, float]] = {}
    with PTQ_TABLE.open() as f:
        for row in csv.DictReader(f):
            if row["model"] != model:
                continue
            values = {c: float(row[c]) for c in COLUMNS if row.get(c)}
            if row["method"] == "FP16":
                found["FP16"] = values
            elif row["method"] == name and row["w_bits"] == bits and row["group_size"] == group:
                found[f"{name} W{bits}A{row['a_bits']}" + (f"-g{group}" if group else "")] = values
    return found if len(found) == 2 else None


def lora_ft_rows(model_id: str, name: str | None) -> dict[str, dict[str, float]] | None:
    """The paper's LoRA-FT table (Table 3) for a model: {'FP16': ..., 'NormalFloat': ..., name: ...}, else None."""
    model = PAPER_MODELS.get(model_id)
    if model is None or name is None:
        return None
    found: dict[str, dict[str, float]] = {}
    with LORA_FT_TABLE.open() as f:
        for row in csv.DictReader(f):
            if row["model"] == model and row["method"] in ("FP16", "NormalFloat", name):
                found[row["method"]] = {c: float(row[c]) for c in LORA_FT_COLUMNS if row.get(c)}
    return found if name in found else None
