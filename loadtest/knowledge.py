"""Knowledge lookups on a large base: the latency a turn pays before the LLM.

Builds a synthetic FAQ of ``--entries`` entries (a product catalogue and policies:
each an answer and two questions, drawn from seeded word lists), loads it into the
embedded index and/or Weaviate (``services.sh env``), then asks ``--queries``
questions worded differently from the stored ones and times each lookup as a call
does it (``KnowledgeBase.lookup``: the question's embedding + the hybrid search),
one at a time. Reports the load time and lookup p50/p95/p99/max.

    python -m loadtest.knowledge --entries 5000 --queries 500 [--store embedded,weaviate]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `voxswitch serve` runs (before numpy)

import argparse
import asyncio
import json
import random
import time

from switch.knowledge import KnowledgeBase, open_store
from switch.knowledge.entries import KnowledgeEntry

PRODUCTS = [
    "pizza",
    "calzone",
    "salad",
    "pasta",
    "lasagne",
    "risotto",
    "soup",
    "burger",
    "wrap",
    "sandwich",
    "bagel",
    "muffin",
    "cake",
    "pie",
    "cookie",
    "smoothie",
    "lemonade",
    "coffee",
    "tea",
    "juice",
]
QUALITIES = [
    "spicy",
    "vegan",
    "gluten-free",
    "large",
    "small",
    "family",
    "classic",
    "seasonal",
    "organic",
    "smoked",
    "grilled",
    "baked",
    "fresh",
    "frozen",
    "sweet",
    "savoury",
]
TOPICS = [
    "price",
    "allergens",
    "delivery",
    "availability",
    "size",
    "ingredients",
    "calories",
    "storage",
    "reheating",
    "refund",
]


def catalogue(n: int, seed: int = 7) -> list[KnowledgeEntry]:
    rng = random.Random(seed)
    entries = []
    for i in range(n):
        product, quality, topic = rng.choice(PRODUCTS), rng.choice(QUALITIES), rng.choice(TOPICS)
        price = rng.randint(3, 40)
        title = f"{quality} {product} {topic} (item {i})"
        text = (
            f"The {quality} {product}, item {i}, costs {price} dollars. Its {topic} "
            f"details: ask for code {rng.randint(1000, 9999)} at the counter."
        )
        questions = (
            f"what is the {topic} of the {quality} {product}",
            f"tell me about {topic} for your {quality} {product} number {i}",
        )
        entries.append(KnowledgeEntry(f"item-{i}", title, text, questions, "bench"))
    return entries


def queries(n: int, entries: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    return [
        f"hi, could you say something about the {rng.choice(TOPICS)} of a "
        f"{rng.choice(QUALITIES)} {rng.choice(PRODUCTS)}, maybe number {rng.randrange(entries)}"
        for _ in range(n)
    ]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def bench(
    store_name: str, entries: list[KnowledgeEntry], asked: list[str], settle_s: float = 30.0
) -> dict[str, object]:
    url = os.environ.get("VOXSWITCH_WEAVIATE_URL", "") if store_name == "weaviate" else ""
    if store_name == "weaviate" and not url:
        raise SystemExit('weaviate: eval "$(deploy/local/services.sh env)" first')
    store = open_store(
        weaviate_url=url,
        collection=f"Kbbench{os.getpid()}",
        weaviate_grpc_port=int(os.environ.get("VOXSWITCH_WEAVIATE_GRPC_PORT", "50051")),
    )
    kb = KnowledgeBase(store, timeout_s=5.0)
    try:
        await kb.warm_up()
        began = time.perf_counter()
        await kb.add("bench", entries)
        load_s = time.perf_counter() - began
        # A base is loaded long before calls ask it: let the store finish indexing and
        # compacting what it was just given (Weaviate does it in the background).
        await asyncio.sleep(settle_s)
        for q in asked[:20]:  # warm the store's caches and connections
            await kb.lookup("bench", q)
        lookups = []
        for q in asked:
            _, lookup = await kb.lookup("bench", q)
            assert lookup.error is None, lookup.error
            lookups.append(1000 * (lookup.lookup_s or 0.0))
        return {
            "store": store_name,
            "entries": len(entries),
            "load_s": round(load_s, 1),
            "queries": len(asked),
            **{f"p{p}_ms": round(percentile(lookups, p), 1) for p in (50, 95, 99)},
            "max_ms": round(max(lookups), 1),
        }
    finally:
        if store_name == "weaviate":
            store.drop()  # type: ignore[attr-defined]
        await kb.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--store", default="embedded,weaviate")
    parser.add_argument("--settle-s", type=float, default=30.0, help="pause after loading")
    args = parser.parse_args()
    entries = catalogue(args.entries)
    asked = queries(args.queries, args.entries)
    for name in args.store.split(","):
        print(json.dumps(asyncio.run(bench(name, entries, asked, args.settle_s))), flush=True)


if __name__ == "__main__":
    main()
