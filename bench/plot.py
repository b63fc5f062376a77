"""The plot of docs/BENCHMARKS.md: throughput against concurrency, per pool and latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot"]


def plot(results: dict[str, Any], path: Path) -> bool:
    """Throughput against concurrency, one panel per latency, one line per pool."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    latencies = sorted({p["latency_ms"] for p in results["pools"]})
    pools = sorted({p["pool"] for p in results["pools"]})
    fig, axes = plt.subplots(1, len(latencies), figsize=(4.2 * len(latencies), 3.6), squeeze=False)
    for ax, ms in zip(axes[0], latencies, strict=True):
        for pool in pools:
            points = sorted(
                (p["concurrency"], p["triggers_per_s"])
                for p in results["pools"]
                if p["pool"] == pool and p["latency_ms"] == ms and p["triggers_per_s"] is not None
            )
            ax.plot([c for c, _ in points], [r for _, r in points], marker="o", label=pool)
        default = [p for p in results["default"]["points"] if p["latency_ms"] == ms]
        if default:
            ax.axhline(
                default[0]["triggers_per_s"],
                color="grey",
                linestyle="--",
                label="README default ({pool}, {concurrency})".format(**results["default"]),
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({p["concurrency"] for p in results["pools"]}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"Clix latency {ms:g} ms")
        ax.set_xlabel("concurrency per worker process")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("triggers/s (one worker)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
