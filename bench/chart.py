"""The PNG beside ``docs/benchmarks.md``: four panels, each with its target drawn in.

matplotlib is a bench-only dependency (the ``bench`` extra); without it there is no chart.
"""

from __future__ import annotations

from pathlib import Path

from bench.run import Results


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw(r: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((ratio_ax, cpu_ax), (ops_ax, lat_ax)) = plt.subplots(2, 2, figsize=(11, 7.5))
    layouts = [k for k in ("A", "C") if k in r.proxied]
    width = 0.38
    for i, name in enumerate(("sidecar", "nginx")):
        xs = [j + (i - 0.5) * width for j in range(len(layouts))]
        ratio_ax.bar(xs, [_proxied(r, k, name)[0] for k in layouts], width, label=name)
        cpu_ax.bar(xs, [_proxied(r, k, name)[1] for k in layouts], width, label=name)
    ratio_goals = {"A": 0.45, "C": 0.75}
    for j, k in enumerate(layouts):
        ratio_ax.hlines(ratio_goals[k], j - 0.45, j + 0.45, colors="red", linestyles="--")
        # The target: at most twice nginx's CPU per request in the same run.
        cpu_ax.hlines(2 * _proxied(r, k, "nginx")[1], j - 0.45, j + 0.45, colors="red",
                      linestyles="--")  # fmt: skip
    for ax, title in (
        (ratio_ax, "Throughput ÷ direct (higher is better; red: target)"),
        (cpu_ax, "CPU µs per proxied request (red: twice nginx)"),
    ):
        ax.set_xticks(range(len(layouts)), [f"layout {k}" for k in layouts])
        ax.set_title(title)
        ax.set_ylim(top=ax.get_ylim()[1] * 1.25)  # room for the legend above the bars
        ax.legend(loc="upper center", ncols=2, fontsize="small")

    ops = [(f"redeem {k}", v.cpu_us or 0.0) for k, v in r.redemptions.items()]
    if r.mints:
        ops.append(("mint", r.mints.cpu_us or 0.0))
    goals = {"redeem sqlite": 120.0, "mint": 100.0}
    ops_ax.bar([n for n, _ in ops], [v for _, v in ops], color="tab:green")
    for i, (name, _) in enumerate(ops):
        if name in goals:
            ops_ax.hlines(goals[name], i - 0.4, i + 0.4, colors="red", linestyles="--")
    ops_ax.set_title("CPU µs per operation (lower is better; red: target)")

    labels = [f"{int(k):,} burned" for k in r.latency]
    p50 = [m.p50_ms for m in r.latency.values()]
    p99 = [m.p99_ms for m in r.latency.values()]
    xs2 = range(len(labels))
    lat_ax.bar([x - width / 2 for x in xs2], p50, width, label="p50")
    lat_ax.bar([x + width / 2 for x in xs2], p99, width, label="p99")
    lat_ax.set_xticks(list(xs2), labels)
    lat_ax.set_ylabel("ms")
    lat_ax.set_title("Redemption latency (4 connections)")
    lat_ax.set_ylim(top=lat_ax.get_ylim()[1] * 1.2)
    lat_ax.legend(loc="upper center", ncols=2, fontsize="small")

    fig.suptitle(f"sidecar benchmarks — {r.meta.get('cpu')}, {r.meta.get('cores')} cores")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _proxied(r: Results, layout: str, name: str) -> tuple[float, float]:
    """(ratio, CPU µs) of ``name`` in ``layout``; zeros when it was not measured."""
    m = r.proxied[layout].get(name)
    return (m.ratio or 0.0, m.cpu_us or 0.0) if m else (0.0, 0.0)
