"""The knowledge base without a server: the loaders, the embedder, the embedded index
(hybrid search, idempotent upserts, its file shared by two instances), the scripted
agent answering from it, and an outage (a Weaviate store whose server is not there)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from actors.agent import KnowledgeUsed, TextDelta
from loadtest.ports import free_port
from switch.agents import DEMO_AGENT_PATH, ScriptedAgent
from switch.knowledge import KnowledgeBase, KnowledgeError, open_store
from switch.knowledge.embedded import EmbeddedStore
from switch.knowledge.embedder import shared_embedder
from switch.knowledge.entries import chunks_of, make_entry, phrases_of
from switch.knowledge.hybrid import Bm25, fuse
from switch.knowledge.loaders import load_file, parse

FAQ_MD = """\
Text before any heading.

# Opening hours
Q: when do you open
Q: are you open on sundays
We are open every day from 11 AM to 10 PM.

## Delivery
We deliver within 5 kilometers. Delivery is free over 20 dollars.

## Delivery
A second section with the same heading.
"""


# ---- loaders -----------------------------------------------------------------------


def test_markdown_sections_become_entries_with_questions_and_stable_ids() -> None:
    entries = parse(FAQ_MD, "shop_faq.md")
    assert [e.id for e in entries] == ["shop-faq", "opening-hours", "delivery", "delivery-2"]
    hours = entries[1]
    assert hours.title == "Opening hours"
    assert hours.questions == ("when do you open", "are you open on sundays")
    assert hours.text == "We are open every day from 11 AM to 10 PM."
    assert hours.source == "shop_faq.md"
    assert parse(FAQ_MD, "shop_faq.md") == entries  # the same file, the same entries


def test_csv_json_text_and_agent_yaml() -> None:
    csv_text = "id,question,answer,questions\nwifi,Do you have wifi?,Yes free wifi.,wifi|internet\n"
    (wifi,) = parse(csv_text, "faq.csv")
    assert (wifi.id, wifi.title, wifi.text, wifi.questions) == (
        "wifi", "Do you have wifi?", "Yes free wifi.", ("wifi", "internet"))  # fmt: skip
    data = {"entries": [{"question": "Parking?", "answer": "Behind the shop."}]}
    (parking,) = parse(json.dumps(data), "faq.json")
    assert parking.id.startswith("parking-") and parking.text == "Behind the shop."
    assert parse(json.dumps(data), "faq.json")[0].id == parking.id  # derived ids are stable
    paragraphs = parse("First one. More.\n\nSecond one.\n", "notes.txt")
    assert [p.title for p in paragraphs] == ["First one.", "Second one."]
    demo = load_file(DEMO_AGENT_PATH)
    delivery = next(e for e in demo if e.id == "delivery")
    assert delivery.title == "do you deliver" and "delivery area" in delivery.questions
    assert all(not q.lower().startswith("dtmf") for e in demo for q in e.questions)


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        ('[{"question": "q"}]', "a.json", "a.json: entries[0].text: missing"),
        ('[{"text": "t", "colour": 1}]', "a.json", "a.json: entries[0].colour: unknown field"),
        ('[{"id": "bad id!", "text": "t"}]', "a.json", "a.json: entries[0].id:"),
        ("{", "a.json", "a.json: invalid JSON"),
        ("question\nhello\n", "a.csv", "a.csv: the header needs an 'answer'"),
        ('[{"id": "x", "text": "a"}, {"id": "x", "text": "b"}]', "a.json", "used by two"),
        ("x", "a.pdf", "a.pdf: unknown format"),
    ],
)
def test_bad_files_are_refused_naming_the_field(text: str, name: str, message: str) -> None:
    with pytest.raises(KnowledgeError) as caught:
        parse(text, name)
    assert message in str(caught.value)


def test_chunks_cover_long_texts_and_each_question() -> None:
    entry = make_entry({"id": "e", "title": "T", "text": " ".join(["word"] * 170),
                        "questions": ["q one", "q two"]}, "x")  # fmt: skip
    chunks = chunks_of(entry)
    assert [c.number for c in chunks] == [0, 1, 2, 3, 4]
    assert chunks[0].text.startswith("T. word") and chunks[3].text == "q one"
    assert chunks[0].uuid("a") == chunks_of(entry)[0].uuid("a") != chunks[0].uuid("b")
    assert phrases_of([entry])[:3] == ["T", "q one", "q two"]


# ---- the embedder and the ranking --------------------------------------------------


def test_minilm_embeddings_are_unit_length_and_match_the_reference_model() -> None:
    vectors = shared_embedder().embed(["This is an example sentence", "do you deliver"])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # sentence-transformers' all-MiniLM-L6-v2 gives 0.0677 0.0635 0.0487 0.0793 here.
    assert np.allclose(vectors[0, :4], [0.0677, 0.0635, 0.0487, 0.0793], atol=5e-4)


def test_bm25_and_fusion_rank_the_matching_document_first() -> None:
    bm25 = Bm25(["we deliver pizza", "opening hours every day", "pizza prices"])
    scores = bm25.scores("when are the opening hours")
    assert max(scores, key=scores.__getitem__) == 1 and 0 not in scores
    fused = fuse(np.array([0.9, 0.1, 0.2], dtype=np.float32), scores, alpha=0.5)
    assert fused[1] == pytest.approx(0.5) and fused[0] == pytest.approx(0.5)


# ---- the embedded index ------------------------------------------------------------


def _kb(folder: Path | None = None) -> KnowledgeBase:
    return KnowledgeBase(EmbeddedStore(folder))


async def test_paraphrase_finds_the_delivery_entry_and_nonsense_finds_nothing() -> None:
    kb = _kb()
    await kb.add("default", load_file(DEMO_AGENT_PATH))
    hits = await kb.search("default", "is it possible to get a pizza brought to my house?")
    assert hits[0].entry.id == "delivery", hits
    assert await kb.search("default", "tell me a joke about cats") == []
    assert await kb.search("other-agent", "do you deliver") == []  # per agent
    await kb.aclose()


async def test_reload_is_idempotent_and_the_file_is_shared(tmp_path: Path) -> None:
    entries = parse(FAQ_MD, "faq.md")
    writer = _kb(tmp_path)
    for _ in range(2):
        await writer.add("shop", entries)
    listed, total = await writer.entries("shop")
    assert total == 4 and sorted(e.id for e in listed) == sorted(e.id for e in entries)
    reader = _kb(tmp_path)  # another process's view: the file
    assert (await reader.entries("shop"))[1] == 4
    assert (await reader.search("shop", "are you open on sundays"))[0].entry.id == "opening-hours"
    changed = make_entry({"id": "delivery", "title": "Delivery", "text": "We no longer deliver."},
                         "x")  # fmt: skip
    await writer.add("shop", [changed])
    assert await writer.remove("shop", ["delivery-2", "nope"]) == 1
    await asyncio.sleep(1.1)  # the reader checks the file's mtime at most once a second
    assert await reader.get("shop", "delivery") == changed
    assert await reader.get("shop", "delivery-2") is None
    assert (await reader.entries("shop"))[1] == 3
    await writer.aclose()
    await reader.aclose()


# ---- the scripted agent ------------------------------------------------------------


async def _reply(agent: ScriptedAgent, text: str) -> tuple[str, list[KnowledgeUsed]]:
    events = [e async for e in agent.respond([], text)]
    said = "".join(e.text for e in events if isinstance(e, TextDelta))
    return said, [e for e in events if isinstance(e, KnowledgeUsed)]


async def test_scripted_agent_answers_from_the_knowledge_base_and_cites_the_entry() -> None:
    kb = _kb()
    entries = load_file(DEMO_AGENT_PATH)
    await kb.add("default", entries)
    agent = ScriptedAgent.from_file(DEMO_AGENT_PATH)
    agent.use_knowledge(kb, "default", phrases_of(entries))
    said, used = await _reply(agent, "can you bring food to my home")
    assert said.startswith("We deliver within 5 kilometers"), said
    assert used[0].entries == ("delivery",) and used[0].error is None
    assert used[0].lookup_s is not None and 0 < used[0].lookup_s < 1
    said, used = await _reply(agent, "what is the weather tomorrow")
    assert said == agent.fallback and used[0].entries == ()
    said, used = await _reply(agent, "goodbye")  # intents still come from the patterns
    assert said == agent.goodbye and used == []
    assert "brought" not in agent.phrases() and "do you deliver" in agent.phrases()
    await kb.aclose()


async def test_an_unreachable_store_makes_the_agent_say_its_fallback_line() -> None:
    port = free_port(udp=False, tcp=True)
    store = open_store(weaviate_url=f"http://127.0.0.1:{port}", weaviate_grpc_port=port,
                       timeout_s=0.5)  # fmt: skip
    kb = KnowledgeBase(store, timeout_s=2.0)
    agent = ScriptedAgent.from_file(DEMO_AGENT_PATH)
    agent.use_knowledge(kb, "default", [])
    said, used = await _reply(agent, "do you deliver to my address")
    assert said == agent.fallback  # not the keyword answer: an outage is said as one
    assert used[0].entries == () and used[0].error and "weaviate" in used[0].error
    await kb.aclose()


def test_an_agent_file_without_knowledge_has_no_entries(tmp_path: Path) -> None:
    """Its answers come from `voxswitch kb load`: the node starts with it (it stopped
    with 'expected a list of entries' before)."""
    path = tmp_path / "clinic.yaml"
    path.write_text("name: Clinic\ngreeting: Hello.\nfallback: Sorry?\nintents:\n"
                    "  - {id: bye, action: hang_up, patterns: [goodbye]}\n")  # fmt: skip
    assert load_file(path) == []
    (tmp_path / "odd.yaml").write_text("just: a mapping\n")
    with pytest.raises(KnowledgeError, match="expected a list of entries"):
        load_file(tmp_path / "odd.yaml")
