"""Small matplotlib plots as Markdown metadata (PNG inlined), viewable in the Dagster UI."""

from __future__ import annotations

import base64
import io

import dagster as dg


def _png_markdown(fig, title: str) -> dg.MetadataValue:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{data})")


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 3), dpi=100)


def line_chart(
    title: str, series: dict[str, list[tuple[float, float]]], *, xlabel: str, ylabel: str
) -> dg.MetadataValue:
    """One line per series of ``(x, y)`` points."""
    fig, ax = _figure()
    for name, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=name, marker="." if len(points) < 30 else None)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    return _png_markdown(fig, title)


def bar_chart(title: str, values: dict[str, float], *, xlabel: str = "", ylabel: str = "") -> dg.MetadataValue:
    fig, ax = _figure()
    names = list(values)
    ax.barh(names, [values[n] for n in names], color="#4f74b3")
    ax.set_title(title)
    ax.set_xlabel(ylabel)
    ax.set_ylabel(xlabel)
    return _png_markdown(fig, title)


def utilization_chart(title: str, routing: dict[str, list[list[float]]]) -> dg.MetadataValue:
    """Share of the routed tokens each expert took, one panel per routing, one group of bars per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(routing), figsize=(3.5 * len(routing), 3), dpi=100, squeeze=False)
    for ax, (name, layers) in zip(axes[0], routing.items(), strict=True):
        n = len(layers[0]) if layers else 0
        width = 0.8 / max(len(layers), 1)
        for i, shares in enumerate(layers):
            ax.bar([e + i * width for e in range(n)], shares, width, label=f"layer {i}")
        if n:
            ax.axhline(1 / n, color="grey", linestyle="--", linewidth=1)  # uniform routing
        ax.set_title(name)
        ax.set_xlabel("expert")
        ax.set_ylabel("share of tokens")
        ax.set_xticks([e + 0.4 - width / 2 for e in range(n)], [str(e) for e in range(n)])
    for ax in axes[0]:
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
    axes[0][0].legend(fontsize="x-small", loc="upper center", ncol=4)
    fig.suptitle(title)
    return _png_markdown(fig, title)
