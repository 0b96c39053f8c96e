"""The benchmark's outputs: one Markdown table per tool, and a PNG comparing the runs."""

from __future__ import annotations

from pathlib import Path

from benchmarks.peers.tools import RunResult


def _cell(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ratio(gateway: float | None, direct: float | None) -> str:
    if gateway is None or direct is None or direct == 0:
        return "—"
    return f"{gateway / direct:.2f}×"


def tables(results: list[RunResult]) -> str:
    """Per tool: gateway vs direct (requests, errors, TTFT p50, ITL p50, output tokens/s),
    the gateway ÷ direct ratio, and the distinct error messages under the table."""
    blocks = []
    for tool in dict.fromkeys(r.tool for r in results):
        runs = [r for r in results if r.tool == tool]
        endpoint = runs[0].endpoint
        lines = [
            f"### {tool} ({endpoint})",
            "",
            "| target | requests | ok | errors | cut off | TTFT p50 ms | ITL p50 ms | output tok/s "
            "| s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in runs:
            lines.append(
                f"| {r.target} | {_cell(r.requests)} | {_cell(r.successful)} | "
                f"{_cell(r.errors)} | {_cell(r.incomplete or 0 if r.report else None)} | "
                f"{_cell(r.ttft_p50_ms)} | {_cell(r.itl_p50_ms, 2)} | "
                f"{_cell(r.output_tokens_per_s)} | {_cell(r.seconds, 0)} |"
            )
        by = {r.target: r for r in runs}
        gw, direct = by.get("gateway"), by.get("direct")
        if gw and direct:
            lines.append(
                f"| gateway ÷ direct | | | | | {_ratio(gw.ttft_p50_ms, direct.ttft_p50_ms)} | "
                f"{_ratio(gw.itl_p50_ms, direct.itl_p50_ms)} | "
                f"{_ratio(gw.output_tokens_per_s, direct.output_tokens_per_s)} | |"
            )
        for r in runs:
            if r.failed:
                exit_text = (
                    "not run"
                    if r.seconds is None
                    else "timed out"
                    if r.exit_code is None
                    else f"exit {r.exit_code}"
                )
                lines.append(f"\n{r.target}: FAILED ({exit_text})")
                lines.extend(f"  - {message}" for message in r.error_messages)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def plot(results: list[RunResult], path: Path, title: str) -> None:
    """Three panels (TTFT p50, ITL p50, output tokens/s), one bar pair per tool; a run that
    failed is drawn as an empty hatched bar labelled with its error count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    tools = list(dict.fromkeys(r.tool for r in results))
    by = {(r.tool, r.target): r for r in results}
    panels = [
        ("ttft_p50_ms", "TTFT p50", "ms"),
        ("itl_p50_ms", "ITL p50", "ms"),
        ("output_tokens_per_s", "output throughput", "tokens/s"),
    ]
    colors = {"gateway": "tab:green", "direct": "tab:blue"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.38
    for ax, (attr, name, unit) in zip(axes, panels, strict=True):
        for offset, target in ((-width / 2, "gateway"), (width / 2, "direct")):
            for index, tool in enumerate(tools):
                run = by.get((tool, target))
                value = getattr(run, attr) if run else None
                x = index + offset
                if value is None:
                    ax.bar(x, 0, width, color="none", edgecolor=colors[target], hatch="//")
                    note = f"{run.errors} err" if run and run.errors else "no data"
                    ax.text(x, 0, note, ha="center", va="bottom", fontsize=8, rotation=90)
                else:
                    ax.bar(x, value, width, color=colors[target])
                    if run and run.errors:
                        ax.text(x, value, f"{run.errors} err", ha="center", va="bottom",
                                fontsize=8)  # fmt: skip
        ax.set_xticks(range(len(tools)), tools)
        ax.set(title=name, ylabel=unit)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(handles=[Patch(color=c, label=t) for t, c in colors.items()])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
