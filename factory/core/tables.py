"""Plain-text tables and numbers for the console (the Markdown ones are the card's and the report's)."""

from __future__ import annotations


def num(value, fmt: str = "{:.4g}") -> str:
    return "-" if value is None else fmt.format(value)


def text_table(rows: list[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def mb(size: int | None) -> str:
    """A size in bytes, as MB."""
    return f"{size / 2**20:.1f} MB" if size else "-"


def mb_value(value: float | None) -> str:
    """A figure already in MB."""
    return f"{value:.0f} MB" if value else "-"
