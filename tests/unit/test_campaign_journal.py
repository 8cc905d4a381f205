"""The campaign journal: replay, torn last line, compaction."""

from __future__ import annotations

from pathlib import Path

from switch.trunking.campaign_journal import KEEP_FINISHED, CampaignJournal, to_keep


def test_replay_keeps_the_last_word_and_skips_a_torn_line(tmp_path: Path) -> None:
    journal = CampaignJournal(tmp_path / "c.jsonl")
    journal.created("c1", 10.0, {"numbers": [{"to": "+15550000001"}]})
    journal.number("c1", 0, {"attempts": 1, "state": "dialing", "call_ids": ["x"]})
    journal.number("c1", 0, {"attempts": 1, "state": "done", "call_ids": ["x"]})
    journal.created("c2", 11.0, {"numbers": []})
    journal.state("c2", "canceled", 12.0)
    journal.close()
    with (tmp_path / "c.jsonl").open("a") as f:
        f.write('{"op": "number", "id": "c1", "i": 0, "attem')  # the process died here
    c1, c2 = CampaignJournal(tmp_path / "c.jsonl").load()
    assert c1["id"] == "c1" and c1["state"] == "running" and c1["created_at"] == 10.0
    assert c1["numbers"] == {0: {"attempts": 1, "state": "done", "call_ids": ["x"]}}
    assert c2["state"] == "canceled" and c2["finished_at"] == 12.0


def test_rewrite_round_trips_and_drops_old_finished_campaigns(tmp_path: Path) -> None:
    journal = CampaignJournal(tmp_path / "c.jsonl")
    campaigns = [
        {"id": f"f{i}", "created_at": float(i), "body": {}, "state": "completed",
         "finished_at": float(i + 1), "numbers": {}}
        for i in range(KEEP_FINISHED + 5)
    ] + [{"id": "live", "created_at": 0.0, "body": {"cps": 1}, "state": "paused",
          "finished_at": None, "numbers": {3: {"attempts": 2, "state": "pending"}}}]  # fmt: skip
    kept = to_keep(campaigns)
    assert kept[0]["id"] == "live" and len(kept) == KEEP_FINISHED + 1
    assert kept[1]["id"] == "f5"  # the oldest finished ones went
    journal.rewrite(kept)
    assert CampaignJournal(tmp_path / "c.jsonl").load() == kept
