"""When is history caught up with its queue: the rule of services/chat/catchup.py, with a scripted /progress."""

from __future__ import annotations

from services.chat.catchup import STALE_AFTER_S, HistoryCatchUp, HistoryProgress, HistoryStanding, QueueStats


def polled(ready: int, consumers: int, queue: str = "chat.history") -> dict[str, QueueStats]:
    return {queue: QueueStats(ready, consumers)}


class Scripted:
    def __init__(self) -> None:
        self.answer: HistoryProgress | None = None

    async def __call__(self) -> HistoryProgress | None:
        return self.answer


async def test_caught_up_once_history_settled_what_it_had_received_at_the_first_quiet_poll() -> None:
    history = Scripted()
    catch_up = HistoryCatchUp(history)
    history.answer = HistoryProgress("b1", received=500, settled=200)  # its prefetch, not ready, not yet stored
    await catch_up.observe(polled(ready=0, consumers=1))
    assert not catch_up.caught_up
    history.answer = HistoryProgress("b1", received=900, settled=499)
    await catch_up.observe(polled(ready=0, consumers=1))
    assert not catch_up.caught_up  # later deliveries do not move the mark
    history.answer = HistoryProgress("b1", received=1200, settled=500)
    await catch_up.observe(polled(ready=0, consumers=1))
    assert catch_up.caught_up


async def test_ready_messages_no_consumer_no_answer_or_a_restart_start_over() -> None:
    history = Scripted()
    catch_up = HistoryCatchUp(history)
    history.answer = HistoryProgress("b1", received=10, settled=10)
    await catch_up.observe(polled(ready=0, consumers=1))
    assert catch_up.caught_up
    for ready, consumers in [(3, 1), (0, 0)]:
        await catch_up.observe(polled(ready=ready, consumers=consumers))
        assert not catch_up.caught_up
        await catch_up.observe(polled(ready=0, consumers=1))
        assert catch_up.caught_up
    history.answer = None
    await catch_up.observe(polled(ready=0, consumers=1))
    assert not catch_up.caught_up
    history.answer = HistoryProgress("b1", received=50, settled=10)
    await catch_up.observe(polled(ready=0, consumers=1))
    history.answer = HistoryProgress("b2", received=5, settled=4)  # restarted: its own counters again
    await catch_up.observe(polled(ready=0, consumers=1))
    assert not catch_up.caught_up
    history.answer = HistoryProgress("b2", received=9, settled=5)
    await catch_up.observe(polled(ready=0, consumers=1))
    assert catch_up.caught_up
    catch_up.reset()
    assert not catch_up.caught_up


async def test_an_answer_older_than_the_stale_bound_is_not_trusted() -> None:
    now = [100.0]
    history = Scripted()
    catch_up = HistoryCatchUp(history, clock=lambda: now[0])
    history.answer = HistoryProgress("b1", received=1, settled=1)
    await catch_up.observe(polled(ready=0, consumers=1))
    assert catch_up.caught_up
    now[0] += STALE_AFTER_S + 0.1  # the poller stalled: history may have restarted meanwhile
    assert not catch_up.caught_up


async def test_each_replica_is_judged_on_the_queue_its_progress_names() -> None:
    first, second = Scripted(), Scripted()
    standing = HistoryStanding([HistoryCatchUp(first), HistoryCatchUp(second, queue="chat.history.1")])
    first.answer = HistoryProgress("a", received=10, settled=10, queue="chat.history")
    second.answer = HistoryProgress("b", received=10, settled=10, queue="chat.history.1")
    backlogged = {"chat.history": QueueStats(0, 1), "chat.history.1": QueueStats(700, 1)}
    await standing.observe(backlogged)
    assert standing.caught_up() == {0}  # replica 1 lags its own queue: reads from it cannot be complete
    await standing.observe({"chat.history": QueueStats(0, 1), "chat.history.1": QueueStats(0, 1)})
    assert standing.caught_up() == {0, 1}
    await standing.observe({"chat.history": QueueStats(0, 0), "chat.history.1": QueueStats(0, 1)})
    assert standing.caught_up() == {1}  # replica 0 killed: its queue has no consumer


async def test_a_url_answering_for_another_queue_than_its_place_is_judged_on_that_queue() -> None:
    history = Scripted()
    catch_up = HistoryCatchUp(history, queue="chat.history")  # first in CHAT_HISTORY_URL, yet it is replica 2
    history.answer = HistoryProgress("c", received=4, settled=4, queue="chat.history.2")
    await catch_up.observe({"chat.history": QueueStats(0, 1), "chat.history.2": QueueStats(9, 1)})
    assert catch_up.queue == "chat.history.2" and not catch_up.caught_up
    await catch_up.observe({"chat.history": QueueStats(5, 0), "chat.history.2": QueueStats(0, 1)})
    assert catch_up.caught_up
    await catch_up.observe({"chat.history": QueueStats(0, 1)})  # its queue is gone (expired): nothing known
    assert not catch_up.caught_up
