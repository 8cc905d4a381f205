"""The knowledge base in Weaviate (weaviate-client v4: HTTP for the schema, gRPC for
data and queries), with our own vectors: the collection has no vectorizer module.

One collection (``kb_collection``, default ``VoxswitchKnowledge``) holds every agent's
chunks, filtered by ``agent``. A chunk object carries its entry's fields, so a search
needs no second fetch; its uuid is derived from (agent, entry id, chunk number), so a
reload overwrites instead of duplicating, and chunks an entry no longer has are deleted
after the new ones are in. Search: Weaviate's hybrid query (BM25 on the chunk text,
our vector, ``relativeScoreFusion``), with the vectors returned so the similarity
checked against the threshold is the same cosine the embedded index uses.

The client is synchronous and thread-safe; :class:`~switch.knowledge.base.KnowledgeBase`
calls these methods in its threads. A connection that fails is retried at the next call.
"""

from __future__ import annotations

import threading
import urllib.parse
from typing import Any

import numpy as np

from switch.knowledge.embedder import Vectors
from switch.knowledge.entries import Chunk, Hit, KnowledgeEntry
from switch.knowledge.hybrid import ALPHA

DEFAULT_COLLECTION = "VoxswitchKnowledge"
_BATCH = 200


class WeaviateStore:
    kind = "weaviate"

    def __init__(
        self,
        url: str,
        *,
        grpc_port: int = 50051,
        api_key: str = "",
        collection: str = DEFAULT_COLLECTION,
        timeout_s: float = 2.0,
        alpha: float = ALPHA,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"weaviate_url: expected http(s)://host:port, got {url!r}")
        self.url = url
        self._host = parts.hostname
        self._secure = parts.scheme == "https"
        self._port = parts.port or (443 if self._secure else 80)
        self._grpc_port = grpc_port
        self._api_key = api_key
        self.collection_name = collection
        self.timeout_s = timeout_s
        self.alpha = alpha
        self._client: Any = None
        self._collection: Any = None
        self._lock = threading.Lock()

    def _kb(self) -> Any:
        """The collection (connecting and creating it on first use)."""
        with self._lock:
            if self._collection is not None:
                return self._collection
            import weaviate
            from weaviate.classes.init import AdditionalConfig, Auth, Timeout

            client = weaviate.connect_to_custom(
                http_host=self._host, http_port=self._port, http_secure=self._secure,
                grpc_host=self._host, grpc_port=self._grpc_port, grpc_secure=self._secure,
                auth_credentials=Auth.api_key(self._api_key) if self._api_key else None,
                additional_config=AdditionalConfig(
                    timeout=Timeout(init=self.timeout_s, query=self.timeout_s, insert=60)
                ),
                skip_init_checks=True,
            )  # fmt: skip
            try:
                client.connect()
                if not client.collections.exists(self.collection_name):
                    self._create(client)
                collection = client.collections.get(self.collection_name)
            except Exception:
                client.close()
                raise
            self._client, self._collection = client, collection
            return collection

    def _create(self, client: Any) -> None:
        from weaviate.classes.config import Configure, DataType, Property, Tokenization
        from weaviate.exceptions import UnexpectedStatusCodeError

        def keyword(name: str, data_type: Any = DataType.TEXT) -> Any:
            return Property(name=name, data_type=data_type, index_searchable=False,
                            tokenization=Tokenization.FIELD)  # fmt: skip

        try:
            client.collections.create(
                self.collection_name,
                vector_config=Configure.Vectors.self_provided(),
                properties=[
                    keyword("agent"), keyword("entry_id"),
                    Property(name="number", data_type=DataType.INT),
                    Property(name="text", data_type=DataType.TEXT),
                    keyword("title"), keyword("body"), keyword("source"),
                    keyword("questions", DataType.TEXT_ARRAY),
                ],
            )  # fmt: skip
        except UnexpectedStatusCodeError:
            # Another node created it between our check and our create.
            if not client.collections.exists(self.collection_name):
                raise

    def _reset(self) -> None:
        with self._lock:
            client, self._client, self._collection = self._client, None, None
        if client is not None:
            client.close()

    def _call(self, fn: Any) -> Any:
        try:
            return fn(self._kb())
        except Exception:
            self._reset()  # reconnect at the next call (the server may have restarted)
            raise

    @staticmethod
    def _agent(agent: str) -> Any:
        from weaviate.classes.query import Filter

        return Filter.by_property("agent").equal(agent)

    # the store

    def upsert(self, agent: str, items: list[tuple[KnowledgeEntry, list[Chunk], Vectors]]) -> int:
        from weaviate.classes.data import DataObject
        from weaviate.classes.query import Filter

        objects = []
        for entry, chunks, vectors in items:
            for chunk, vector in zip(chunks, vectors, strict=True):
                properties = {
                    "agent": agent, "entry_id": entry.id, "number": chunk.number,
                    "text": chunk.text, "title": entry.title, "body": entry.text,
                    "source": entry.source, "questions": list(entry.questions),
                }  # fmt: skip
                objects.append(DataObject(properties=properties, uuid=chunk.uuid(agent),
                                          vector=vector.tolist()))  # fmt: skip
        new = {str(o.uuid) for o in objects}
        ids = [entry.id for entry, _, _ in items]

        def write(kb: Any) -> None:
            for start in range(0, len(objects), _BATCH):
                result = kb.data.insert_many(objects[start : start + _BATCH])
                if result.has_errors:
                    first = next(iter(result.errors.values()))
                    raise RuntimeError(f"weaviate insert: {first.message}")
            for start in range(0, len(ids), _BATCH):
                where = self._agent(agent) & Filter.by_property("entry_id").contains_any(
                    ids[start : start + _BATCH]
                )
                old = [u for u in self._uuids(kb, where) if u not in new]
                if old:
                    kb.data.delete_many(where=Filter.by_id().contains_any(old))

        self._call(write)
        return len(items)

    @staticmethod
    def _uuids(kb: Any, where: Any) -> list[str]:
        out: list[str] = []
        offset = 0
        while True:
            page = kb.query.fetch_objects(filters=where, limit=1000, offset=offset,
                                          return_properties=[])  # fmt: skip
            out.extend(str(o.uuid) for o in page.objects)
            if len(page.objects) < 1000:
                return out
            offset += 1000

    def remove(self, agent: str, ids: list[str]) -> int:
        from weaviate.classes.query import Filter

        def delete(kb: Any) -> int:
            removed = 0
            for start in range(0, len(ids), _BATCH):
                part = ids[start : start + _BATCH]
                heads = self._agent(agent) & Filter.by_property("number").equal(0)
                found = kb.query.fetch_objects(
                    filters=heads & Filter.by_property("entry_id").contains_any(part),
                    limit=len(part), return_properties=["entry_id"],
                )  # fmt: skip
                removed += len(found.objects)
                kb.data.delete_many(
                    where=self._agent(agent) & Filter.by_property("entry_id").contains_any(part)
                )
            return removed

        return int(self._call(delete))

    def entries(self, agent: str, offset: int, limit: int) -> tuple[list[KnowledgeEntry], int]:
        from weaviate.classes.query import Filter, Sort

        heads = self._agent(agent) & Filter.by_property("number").equal(0)

        def page(kb: Any) -> tuple[list[KnowledgeEntry], int]:
            total = kb.aggregate.over_all(filters=heads, total_count=True).total_count or 0
            if limit <= 0 or offset >= total:
                return [], total
            found = kb.query.fetch_objects(filters=heads, limit=limit, offset=offset,
                                           sort=Sort.by_property("entry_id"))  # fmt: skip
            return [_entry(o.properties) for o in found.objects], total

        entries, total = self._call(page)
        return entries, total

    def get(self, agent: str, entry_id: str) -> KnowledgeEntry | None:
        from weaviate.classes.query import Filter

        where = (self._agent(agent) & Filter.by_property("number").equal(0)
                 & Filter.by_property("entry_id").equal(entry_id))  # fmt: skip
        found = self._call(lambda kb: kb.query.fetch_objects(filters=where, limit=1))
        return _entry(found.objects[0].properties) if found.objects else None

    def search(self, agent: str, query: str, vector: Vectors, k: int) -> list[Hit]:
        from weaviate.classes.query import HybridFusion, MetadataQuery

        result = self._call(
            lambda kb: kb.query.hybrid(
                query=query, vector=vector.tolist(), alpha=self.alpha, limit=max(4 * k, 10),
                filters=self._agent(agent), fusion_type=HybridFusion.RELATIVE_SCORE,
                query_properties=["text"], return_metadata=MetadataQuery(score=True),
                include_vector=True,
            )
        )  # fmt: skip
        best: dict[str, Hit] = {}
        for obj in result.objects:
            props = obj.properties
            chunk_vector = obj.vector.get("default") if isinstance(obj.vector, dict) else None
            similarity = (float(np.dot(np.asarray(chunk_vector, dtype=np.float32), vector))
                          if chunk_vector else 0.0)  # fmt: skip
            entry_id = str(props["entry_id"])
            hit = best.get(entry_id)
            if hit is None:
                best[entry_id] = Hit(_entry(props), float(obj.metadata.score or 0.0),
                                     similarity, str(props["text"]))  # fmt: skip
            elif similarity > hit.similarity:
                best[entry_id] = Hit(hit.entry, hit.score, similarity, hit.chunk)
        return sorted(best.values(), key=lambda h: -h.score)[:k]

    def drop(self) -> None:
        """Delete the whole collection (tests, ``voxswitch kb`` never does)."""
        self._call(lambda kb: self._client.collections.delete(self.collection_name))
        self._reset()

    def close(self) -> None:
        self._reset()


def _entry(props: Any) -> KnowledgeEntry:
    return KnowledgeEntry(str(props["entry_id"]), str(props.get("title") or ""),
                          str(props.get("body") or ""), tuple(props.get("questions") or ()),
                          str(props.get("source") or ""))  # fmt: skip
