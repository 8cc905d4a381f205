"""The embedded knowledge index: in-process numpy vectors and BM25, one file per agent.

The default when no Weaviate URL is set, so a node stays offline and self-contained.
Each agent's entries, chunks and vectors live in memory and, with a folder, in
``<kb_dir>/<agent>.npz`` (written whole to a temporary file and renamed, under a file
lock, so ``voxswitch kb load`` and a node's API can both change it). A node notices a
changed file (its mtime) at its next lookup and reloads it. A search scores every
chunk: 25,000 chunks (5,000 FAQ entries) take a few milliseconds.

The methods block (numpy, file I/O): :class:`~switch.knowledge.base.KnowledgeBase`
calls them in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from switch.knowledge.embedder import Vectors
from switch.knowledge.entries import Chunk, Hit, KnowledgeEntry
from switch.knowledge.hybrid import ALPHA, Bm25, fuse

_RELOAD_CHECK_S = 1.0


@dataclass
class _AgentIndex:
    entries: dict[str, KnowledgeEntry] = field(default_factory=dict)
    chunks: list[Chunk] = field(default_factory=list)
    vectors: Vectors = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    mtime: float = 0.0
    checked_at: float = 0.0
    _bm25: Bm25 | None = None

    @property
    def bm25(self) -> Bm25:
        if self._bm25 is None:
            self._bm25 = Bm25([c.text for c in self.chunks])
        return self._bm25

    def replace(self, items: list[tuple[KnowledgeEntry, list[Chunk], Vectors]]) -> None:
        ids = {entry.id for entry, _, _ in items}
        self.remove(ids)
        blocks = [self.vectors] if len(self.chunks) else []
        for entry, chunks, vectors in items:
            self.entries[entry.id] = entry
            self.chunks.extend(chunks)
            blocks.append(vectors)
        self.vectors = np.concatenate(blocks) if blocks else self.vectors
        self._bm25 = None

    def remove(self, ids: set[str]) -> int:
        gone = [i for i in ids if i in self.entries]
        if not gone:
            return 0
        for entry_id in gone:
            del self.entries[entry_id]
        keep = [n for n, c in enumerate(self.chunks) if c.entry_id not in ids]
        self.chunks = [self.chunks[n] for n in keep]
        self.vectors = self.vectors[keep]
        self._bm25 = None
        return len(gone)


class EmbeddedStore:
    kind = "embedded"

    def __init__(self, folder: str | os.PathLike[str] | None = None, alpha: float = ALPHA) -> None:
        self.folder = Path(folder) if folder else None
        self.alpha = alpha
        self._agents: dict[str, _AgentIndex] = {}
        self._lock = threading.Lock()

    # files

    def _path(self, agent: str) -> Path | None:
        return self.folder / f"{agent}.npz" if self.folder else None

    @contextlib.contextmanager
    def _file_lock(self, agent: str) -> Iterator[None]:
        if self.folder is None:
            yield
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f".{agent}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _index(self, agent: str, *, fresh: bool = False) -> _AgentIndex:
        """The agent's index, reloaded when its file changed (``fresh``: check now)."""
        index = self._agents.setdefault(agent, _AgentIndex())
        path = self._path(agent)
        now = time.monotonic()
        if path is None or (not fresh and now - index.checked_at < _RELOAD_CHECK_S):
            return index
        index.checked_at = now
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return index
        if mtime != index.mtime:
            index = self._read(path)
            index.mtime, index.checked_at = mtime, now
            self._agents[agent] = index
        return index

    @staticmethod
    def _read(path: Path) -> _AgentIndex:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            vectors = np.asarray(data["vectors"], dtype=np.float32)
        index = _AgentIndex()
        for raw in meta["entries"]:
            entry = KnowledgeEntry(raw["id"], raw["title"], raw["text"],
                                   tuple(raw["questions"]), raw["source"])  # fmt: skip
            index.entries[entry.id] = entry
        index.chunks = [Chunk(e, n, t) for e, n, t in meta["chunks"]]
        index.vectors = vectors
        return index

    def _write(self, agent: str, index: _AgentIndex) -> None:
        path = self._path(agent)
        if path is None:
            return
        meta = {"entries": [e.as_dict() for e in index.entries.values()],
                "chunks": [[c.entry_id, c.number, c.text] for c in index.chunks]}  # fmt: skip
        buffer = io.BytesIO()
        np.savez(buffer, vectors=index.vectors, meta=np.array(json.dumps(meta)))
        tmp = path.with_suffix(".npz.tmp")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
        index.mtime = path.stat().st_mtime

    # the store

    def upsert(self, agent: str, items: list[tuple[KnowledgeEntry, list[Chunk], Vectors]]) -> int:
        with self._lock, self._file_lock(agent):
            index = self._index(agent, fresh=True)
            index.replace(items)
            self._write(agent, index)
            return len(items)

    def remove(self, agent: str, ids: list[str]) -> int:
        with self._lock, self._file_lock(agent):
            index = self._index(agent, fresh=True)
            removed = index.remove(set(ids))
            if removed:
                self._write(agent, index)
            return removed

    def entries(self, agent: str, offset: int, limit: int) -> tuple[list[KnowledgeEntry], int]:
        with self._lock:
            index = self._index(agent)
            ordered = sorted(index.entries)
            return [index.entries[i] for i in ordered[offset : offset + limit]], len(ordered)

    def get(self, agent: str, entry_id: str) -> KnowledgeEntry | None:
        with self._lock:
            return self._index(agent).entries.get(entry_id)

    def search(self, agent: str, query: str, vector: Vectors, k: int) -> list[Hit]:
        with self._lock:
            index = self._index(agent)
            if not index.chunks:
                return []
            similarities = index.vectors @ vector
            fused = fuse(similarities, index.bm25.scores(query), self.alpha)
            chunks, entries = index.chunks, index.entries
        best: dict[str, Hit] = {}
        for n, score in sorted(fused.items(), key=lambda kv: -kv[1]):
            chunk = chunks[n]
            similarity = float(similarities[n])
            hit = best.get(chunk.entry_id)
            if hit is None:
                best[chunk.entry_id] = Hit(entries[chunk.entry_id], score, similarity, chunk.text)
            elif similarity > hit.similarity:
                best[chunk.entry_id] = Hit(hit.entry, hit.score, similarity, hit.chunk)
        return sorted(best.values(), key=lambda h: -h.score)[:k]

    def close(self) -> None:
        self._agents.clear()
