"""The report's charts (PNG): the turn latencies' distribution, and each case's call as
a timeline of who spoke when. matplotlib is optional (``pip install voxswitch[eval]``):
without it the report is written without charts and says so."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switch.eval.runner import Outcome

LATENCY_PNG = "latency.png"
TIMELINE_PNG = "timeline.png"
_CALLER, _AGENT, _LINE = "#3b7dd8", "#e07b39", "#888888"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def draw_charts(folder: Path, outcomes: Sequence[Outcome], totals: dict[str, Any]) -> list[str]:
    """The charts written into ``folder`` (file names); [] without matplotlib.
    ``totals``: the report's, whose latency percentiles the histogram marks."""
    plt = _pyplot()
    if plt is None:
        return []
    written = []
    latencies = [t.latency_s for o in outcomes for t in o.verdict.turns if t.latency_s]
    if latencies:
        marks = (totals.get("turn_latency_p50_s"), totals.get("turn_latency_p95_s"))
        _latency_chart(plt, folder / LATENCY_PNG, latencies, marks)
        written.append(LATENCY_PNG)
    calls = [o for o in outcomes if o.result is not None and o.result.answered]
    if calls:
        _timeline_chart(plt, folder / TIMELINE_PNG, calls)
        written.append(TIMELINE_PNG)
    return written


def _latency_chart(
    plt: Any, path: Path, latencies: Sequence[float], marks: tuple[Any, Any]
) -> None:
    figure, axes = plt.subplots(figsize=(7, 3.5))
    axes.hist(latencies, bins=min(30, max(5, len(latencies) // 2)), color=_AGENT)
    for value, name, style in zip(marks, ("p50", "p95"), ("--", ":"), strict=True):
        if value is not None:
            axes.axvline(value, color="black", linestyle=style, label=f"{name} {value:.2f} s")
    axes.set_xlabel("turn latency at the caller's ear (s): end of the line to the reply")
    axes.set_ylabel("turns")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _timeline_chart(plt: Any, path: Path, calls: Sequence[Outcome]) -> None:
    height = 0.6 + 0.32 * len(calls)
    figure, axes = plt.subplots(figsize=(10, height))
    for row, outcome in enumerate(calls):
        result = outcome.result
        assert result is not None
        y = len(calls) - 1 - row
        for speech, colour, offset in ((result.speech("caller"), _CALLER, 0.12),
                                       (result.speech("agent"), _AGENT, -0.12)):  # fmt: skip
            spans = [(s, (e if e is not None else result.duration_s) - s) for s, e in speech]
            axes.broken_barh(spans, (y + offset - 0.1, 0.2), color=colour)
        axes.plot([0, result.duration_s], [y, y], color=_LINE, linewidth=0.3)
        mark = "" if outcome.verdict.passed else " ✗"
        axes.text(-0.2, y, outcome.case.id + mark, ha="right", va="center", fontsize=7)
    axes.set_yticks([])
    axes.set_xlabel("seconds from the answer (blue: caller, orange: agent, as the caller heard)")
    axes.set_xlim(left=0)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
