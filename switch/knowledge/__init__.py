"""The agents' knowledge: entries (FAQ answers, policy sections) searched by meaning
and by words, answered from by the scripted agent and given to the LLM.

``entries`` (what is stored), ``loaders`` (files → entries), ``embedder`` (MiniLM in
numpy), ``hybrid`` (BM25 + vector fusion), two stores — ``embedded`` (in-process, the
default) and ``weaviate_store`` — and ``base.KnowledgeBase`` in front of them.
Imports point one way: nothing here imports the node, the agents or the API.
"""

from __future__ import annotations

from switch.config import ConfigError, Settings
from switch.knowledge.base import KnowledgeBase, KnowledgeStore, KnowledgeUnavailable
from switch.knowledge.entries import Hit, KnowledgeEntry, KnowledgeError, Lookup

__all__ = [
    "Hit",
    "KnowledgeBase",
    "KnowledgeEntry",
    "KnowledgeError",
    "KnowledgeStore",
    "KnowledgeUnavailable",
    "Lookup",
    "build_knowledge",
    "open_store",
]


def open_store(
    *,
    weaviate_url: str = "",
    weaviate_grpc_port: int = 50051,
    weaviate_api_key: str = "",
    collection: str = "",
    kb_dir: str = "",
    timeout_s: float = 2.0,
) -> KnowledgeStore:
    """Weaviate when a URL is given, else the embedded index (in ``kb_dir`` if set)."""
    if weaviate_url:
        from switch.knowledge.weaviate_store import DEFAULT_COLLECTION, WeaviateStore

        return WeaviateStore(
            weaviate_url, grpc_port=weaviate_grpc_port, api_key=weaviate_api_key,
            collection=collection or DEFAULT_COLLECTION, timeout_s=timeout_s,
        )  # fmt: skip
    from switch.knowledge.embedded import EmbeddedStore

    return EmbeddedStore(kb_dir or None)


def build_knowledge(settings: Settings) -> KnowledgeBase:
    """Weaviate at ``weaviate_url``, else the embedded index in ``kb_dir``."""
    try:
        store = open_store(
            weaviate_url=settings.weaviate_url, weaviate_grpc_port=settings.weaviate_grpc_port,
            weaviate_api_key=settings.weaviate_api_key, collection=settings.kb_collection,
            kb_dir=settings.kb_dir, timeout_s=settings.kb_timeout_ms / 1000,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return KnowledgeBase(store, top_k=settings.kb_top_k, min_similarity=settings.kb_min_similarity,
                         timeout_s=settings.kb_timeout_ms / 1000)  # fmt: skip
