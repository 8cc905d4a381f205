"""The Weaviate that deploy/local/services.sh builds and starts (issue 11's vector store):
reachable by weaviate-client v4 over HTTP and gRPC at the URL and gRPC port
``services.sh env`` prints, with no vectorizer module (we bring our own vectors),
hybrid (BM25 + vector) search, and an upsert by a deterministic id that does not
duplicate an entry."""

from __future__ import annotations

import hashlib
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

ENTRIES = {
    "hours": "We are open every day from 11 AM to 10 PM.",
    "delivery": "We deliver within five miles of the restaurant.",
    "address": "We are at 42 Main Street, next to the central station.",
}


@pytest.fixture
def client(services: dict[str, str]) -> Iterator[Any]:
    import weaviate

    url = urllib.parse.urlsplit(services["VOXSWITCH_WEAVIATE_URL"])
    connection = weaviate.connect_to_local(
        host=url.hostname or "127.0.0.1", port=url.port or 80,
        grpc_port=int(services["VOXSWITCH_WEAVIATE_GRPC_PORT"]),
    )  # fmt: skip
    yield connection
    connection.close()


def vector_of(entry_id: str) -> list[float]:
    rng = np.random.default_rng(int(hashlib.sha256(entry_id.encode()).hexdigest()[:8], 16))
    v = rng.normal(size=32)
    return list(v / np.linalg.norm(v))


def test_hybrid_search_over_our_own_vectors_and_idempotent_upserts(client: Any) -> None:
    from weaviate.classes.config import Configure, DataType, Property
    from weaviate.classes.query import MetadataQuery

    assert client.is_ready()
    assert client.get_meta()["version"] == "1.35.2"
    name = f"Kbtest{uuid.uuid4().hex[:8]}"
    kb = client.collections.create(
        name, vector_config=Configure.Vectors.self_provided(),
        properties=[Property(name="entry_id", data_type=DataType.TEXT),
                    Property(name="text", data_type=DataType.TEXT)],
    )  # fmt: skip
    try:
        for _ in range(2):  # loaded twice: the same three objects
            for entry_id, text in ENTRIES.items():
                key = uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/{entry_id}")
                if kb.data.exists(key):
                    kb.data.replace(uuid=key, properties={"entry_id": entry_id, "text": text},
                                    vector=vector_of(entry_id))  # fmt: skip
                else:
                    kb.data.insert(properties={"entry_id": entry_id, "text": text},
                                   vector=vector_of(entry_id), uuid=key)  # fmt: skip
        assert len(kb) == 3
        # The words alone (alpha 0: BM25) and the vector alone (alpha 1) both find it.
        by_words = kb.query.hybrid(query="do you deliver", alpha=0.0, limit=1,
                                   vector=vector_of("hours"))  # fmt: skip
        assert by_words.objects[0].properties["entry_id"] == "delivery"
        by_vector = kb.query.hybrid(query="do you deliver", alpha=1.0, limit=1,
                                    vector=vector_of("address"))  # fmt: skip
        assert by_vector.objects[0].properties["entry_id"] == "address"
        mixed = kb.query.hybrid(query="main street", vector=vector_of("address"), alpha=0.5,
                                limit=3, return_metadata=MetadataQuery(score=True))  # fmt: skip
        assert mixed.objects[0].properties["entry_id"] == "address"
        scores = [o.metadata.score for o in mixed.objects]
        assert scores == sorted(scores, reverse=True)
    finally:
        client.collections.delete(name)
