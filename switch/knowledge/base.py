"""The knowledge base as the node, the agents, the API and the CLI use it.

:class:`KnowledgeBase` puts the embedder in front of a store (the embedded index or
Weaviate): it embeds chunks on the way in and the question on the way out, runs the
blocking work in its own threads (the event loop keeps its 20 ms media ticks), bounds
a lookup by ``timeout_s`` and turns any store failure into :class:`KnowledgeUnavailable`
— the agent then says its fallback line. It never switches to another store behind the
caller's back: a Weaviate outage is an outage, reported, not a silently emptier answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from switch.knowledge.accept import accepted, normalise_question
from switch.knowledge.embedder import Embedder, Vectors, shared_embedder
from switch.knowledge.entries import Chunk, Hit, KnowledgeEntry, Lookup, chunks_of

log = logging.getLogger("voxswitch.knowledge")

DEFAULT_TOP_K = 3
DEFAULT_MIN_SIMILARITY = 0.45
_EMBED_BATCH_ENTRIES = 64
T = TypeVar("T")


class KnowledgeUnavailable(RuntimeError):
    """The store did not answer (down, timed out, refused); the message says how."""


class KnowledgeStore(Protocol):
    kind: str

    def upsert(
        self, agent: str, items: list[tuple[KnowledgeEntry, list[Chunk], Vectors]]
    ) -> int: ...

    def remove(self, agent: str, ids: list[str]) -> int: ...

    def entries(self, agent: str, offset: int, limit: int) -> tuple[list[KnowledgeEntry], int]: ...

    def get(self, agent: str, entry_id: str) -> KnowledgeEntry | None: ...

    def search(self, agent: str, query: str, vector: Vectors, k: int) -> list[Hit]: ...

    def close(self) -> None: ...


class KnowledgeBase:
    def __init__(
        self,
        store: KnowledgeStore,
        *,
        embedder: Callable[[], Embedder] = shared_embedder,
        top_k: int = DEFAULT_TOP_K,
        min_similarity: float = DEFAULT_MIN_SIMILARITY,
        timeout_s: float = 1.0,
    ) -> None:
        self.store = store
        self._embedder_factory = embedder
        self.top_k = top_k
        self.min_similarity = min_similarity
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kb")

    @property
    def kind(self) -> str:
        return self.store.kind

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _store(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        try:
            return await asyncio.wait_for(self._run(fn, *args), timeout_s)
        except TimeoutError:
            raise KnowledgeUnavailable(f"{self.kind}: no answer in {timeout_s} s") from None
        except Exception as exc:
            raise KnowledgeUnavailable(f"{self.kind}: {type(exc).__name__}: {exc}") from exc

    async def warm_up(self) -> None:
        """Load the model now (~1 s) rather than at a caller's first question."""
        await self._run(lambda: self._embedder_factory().embed(["warm up"]))

    def _embed_items(
        self, entries: list[KnowledgeEntry]
    ) -> list[tuple[KnowledgeEntry, list[Chunk], Vectors]]:
        embedder = self._embedder_factory()
        chunked = [(entry, chunks_of(entry)) for entry in entries]
        vectors = embedder.embed([c.text for _, chunks in chunked for c in chunks])
        items, at = [], 0
        for entry, chunks in chunked:
            items.append((entry, chunks, vectors[at : at + len(chunks)]))
            at += len(chunks)
        return items

    async def add(
        self,
        agent: str,
        entries: list[KnowledgeEntry],
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Embed and upsert ``entries`` (replacing entries with the same ids)."""
        done = 0
        for start in range(0, len(entries), _EMBED_BATCH_ENTRIES):
            batch = entries[start : start + _EMBED_BATCH_ENTRIES]
            items = await self._run(self._embed_items, batch)
            await self._store(self.store.upsert, agent, items)
            done += len(batch)
            if progress is not None:
                progress(done)
        return done

    async def remove(self, agent: str, ids: list[str]) -> int:
        return await self._store(self.store.remove, agent, ids)

    async def entries(
        self, agent: str, offset: int = 0, limit: int = 100
    ) -> tuple[list[KnowledgeEntry], int]:
        return await self._store(self.store.entries, agent, offset, limit)

    async def get(self, agent: str, entry_id: str) -> KnowledgeEntry | None:
        return await self._store(self.store.get, agent, entry_id)

    async def search(
        self, agent: str, query: str, k: int | None = None, min_similarity: float | None = None
    ) -> list[Hit]:
        """The best entries for ``query`` the caller is answered from (``accept.py``:
        at least ``min_similarity`` like it, or clearly ahead of the rest), best first;
        raises :class:`KnowledgeUnavailable`."""
        k = k or self.top_k
        threshold = self.min_similarity if min_similarity is None else min_similarity
        query = normalise_question(query) or query
        vector = await self._run(lambda: self._embedder_factory().embed([query])[0])
        # Two at least: how far the best leads the runner-up is part of the verdict.
        hits = await self._store(self.store.search, agent, query, vector, max(k, 2),
                                 timeout_s=self.timeout_s)  # fmt: skip
        return accepted(hits, threshold)[:k]

    async def embed(self, texts: list[str]) -> Vectors:
        """Unit vectors of ``texts`` (cosine = dot product), off the event loop: for
        matching by meaning outside the store (the scripted agent's intents)."""
        return await self._run(lambda: self._embedder_factory().embed(texts))

    async def embed_spans(self, text: str) -> Vectors:
        """Unit vectors of ``text`` and of its runs of a few words (``embed_spans`` of
        the embedder; the whole text alone for one without it)."""

        def work() -> Vectors:
            embedder = self._embedder_factory()
            spans = getattr(embedder, "embed_spans", None)
            return spans(text)[1] if spans is not None else embedder.embed([text])

        return await self._run(work)

    async def lookup(self, agent: str, query: str) -> tuple[list[Hit], Lookup]:
        """:meth:`search` measured for the turn record; an outage is in ``Lookup.error``."""
        started = time.perf_counter()
        try:
            hits = await self.search(agent, query)
        except KnowledgeUnavailable as exc:
            log.warning("knowledge base: %s", exc)
            return [], Lookup([], round(time.perf_counter() - started, 4), str(exc)[:200])
        return hits, Lookup([h.entry.id for h in hits], round(time.perf_counter() - started, 4))

    async def aclose(self) -> None:
        await self._run(self.store.close)
        self._pool.shutdown(wait=False)
