"""The heap that existed before a run is left out of the collector's passes while runs go on
(``gc.freeze``), and handed back when the last run ends, whatever way it ends."""

from __future__ import annotations

import gc
import threading

import httpx
import pytest
from conftest import Server, chat_answer, run, wait_until

from batchmagic import _heap


@pytest.fixture(autouse=True)
def _no_run_going():
    # a background run of an earlier test still ending would hold the freeze
    wait_until(lambda: _heap._runs == 0, "earlier runs to end", timeout=60)
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()  # never leave a test's freeze to the next one


def counting_server(seen: list[int]):
    def answer(request, body):
        seen.append(gc.get_freeze_count())  # the server runs on the run's loop thread
        return httpx.Response(200, json=chat_answer("ok"))

    return Server(answer)


def test_a_run_freezes_the_heap_while_it_sends_and_gives_it_back_after():
    seen: list[int] = []
    df = run(["a", "b", "c"], server=counting_server(seen), cache=False)
    assert df["error"].isna().all()
    assert len(seen) == 3 and min(seen) > 1000  # the interpreter's own objects at least
    assert gc.get_freeze_count() == 0


def test_a_cancelled_background_run_gives_the_heap_back_too():
    import batchmagic as bm
    from batchmagic.simulator import SimulatorThread

    with SimulatorThread(latency=0.2) as sim:
        task = bm.submit([f"r{i}" for i in range(60)], provider="simulator",
                         base_url=sim.base_url, model="m", concurrency=2, progress=False,
                         cache=False)
        wait_until(lambda: task.finished_count() >= 2, "two rows answered")
        assert gc.get_freeze_count() > 0  # the run is going
        task.cancel()
        df = task.wait(60)
    assert df["error"].notna().any()  # cut short
    wait_until(lambda: _heap._runs == 0, "the run to end")
    assert gc.get_freeze_count() == 0


def test_a_heap_the_program_froze_itself_is_left_as_it_was():
    gc.freeze()
    before = gc.get_freeze_count()
    seen: list[int] = []
    run(["a", "b"], server=counting_server(seen), cache=False)
    assert seen and gc.get_freeze_count() > 0 and not _heap._froze
    assert gc.get_freeze_count() <= before  # nothing added, nothing unfrozen


def test_nothing_is_frozen_while_the_collector_is_off():
    gc.disable()
    try:
        with _heap.frozen_heap():
            assert gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_overlapping_runs_keep_the_freeze_until_the_last_one_ends():
    first_in, first_may_end = threading.Event(), threading.Event()

    def first():
        with _heap.frozen_heap():
            first_in.set()
            first_may_end.wait(60)

    t = threading.Thread(target=first)
    t.start()
    assert first_in.wait(60)
    with _heap.frozen_heap():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() > 0 and _heap._runs == 1  # the first run is still going
    first_may_end.set()
    t.join(60)
    assert _heap._runs == 0 and gc.get_freeze_count() == 0


def test_an_error_inside_gives_the_heap_back():
    with pytest.raises(ValueError), _heap.frozen_heap():
        assert gc.get_freeze_count() > 0
        raise ValueError("boom")
    assert gc.get_freeze_count() == 0 and _heap._runs == 0
