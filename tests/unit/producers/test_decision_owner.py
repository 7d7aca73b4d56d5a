"""A decision answers the attempt of the user it names (issue 12, item 4), without Kafka or Redis."""

from __future__ import annotations

import asyncio

import orjson

from producers.decisions import Decision, DecisionWaiter, decision_from_record


def _decision(user: str, outcome: str = "accepted", reason: str | None = None) -> Decision:
    return Decision("o-1", "s1", outcome, reason, "reserved" if outcome == "accepted" else "rejected", 1,
                    None, None, user)


async def test_another_users_decision_never_answers_a_wait() -> None:
    waiter = DecisionWaiter("127.0.0.1:1", "t")  # never started: resolve() is fed by hand
    mine = asyncio.create_task(waiter.wait("s1", "o-1", 2.0, user_id="u2"))
    await asyncio.sleep(0)
    waiter.resolve(_decision("u1"))  # the owner's acceptance (or a forged one naming the owner)
    await asyncio.sleep(0.01)
    assert not mine.done()
    waiter.resolve(_decision("u2", "rejected", "order_id_taken"))
    got = await mine
    assert (got.outcome, got.reason, got.user_id) == ("rejected", "order_id_taken", "u2")
    assert waiter.recent("s1", "o-1", "u1") is not None and waiter.recent("s1", "o-1") is not None


def test_a_record_owned_by_another_user_answers_order_id_taken() -> None:
    raw = orjson.dumps({"s": "reserved", "u": "u1", "q": 2, "p": 990, "d": 1_700_000_300_000, "e": "e",
                        "r": "", "t": 1_700_000_000_000, "k": "sku-1"})
    owner = decision_from_record("s1", "o-1", raw, "u1")
    other = decision_from_record("s1", "o-1", raw, "u2")
    assert owner is not None and (owner.outcome, owner.qty) == ("accepted", 2)
    assert other is not None and (other.outcome, other.reason, other.qty) == ("rejected", "order_id_taken", 0)
