"""Small matplotlib plots as Markdown metadata (PNG inlined), viewable in the Dagster UI."""

from __future__ import annotations

import base64
import io

import dagster as dg


def bar_chart(title: str, values: dict[str, float], *, xlabel: str = "", ylabel: str = "") -> dg.MetadataValue:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    names = list(values)
    ax.barh(names, [values[n] for n in names], color="#4f74b3")
    ax.set_title(title)
    ax.set_xlabel(ylabel)
    ax.set_ylabel(xlabel)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{data})")
