"""One lifecycle, pluggable executors, one option table: a toy executor runs through the
unchanged lifecycle; the four run functions share the table's signature; an unknown keyword
says what was meant; an estimate sends nothing, writes nothing and needs no key."""

from __future__ import annotations

import inspect
import os

import pytest

import batchmagic as bm
from batchmagic import _magic, _options, cli
from batchmagic.executors import EXECUTORS


class ShoutExecutor:
    """Answers each chat row with its prompt in capitals, without any server."""

    def __init__(self, run):
        self._run = run
        self.cancelled = False
        self.stopped_by = None

    def prepare(self) -> None:
        pass

    async def run(self) -> None:
        run = self._run
        for unit in run.units:
            for i in unit.items:
                text = run.plan.items[i].body["messages"][-1]["content"]
                run.results.output[i] = text.upper()
                run.results.finish_reason[i] = "stop"
                run.results.done[i] = 1
                run.progress.finish([i])
                run.item_done(i)

    async def close(self) -> None:
        if self._run.durable is not None:
            await self._run.durable.drain()

    def control(self, action: str) -> None:
        self.cancelled = self.cancelled or action == "cancel"

    def facts(self) -> dict:
        return {"shouted": True}

    def handle(self, task):
        return task


def test_a_toy_executor_runs_through_the_unchanged_lifecycle(monkeypatch):
    monkeypatch.setitem(EXECUTORS, "shout", ShoutExecutor)
    where = dict(base_url="http://127.0.0.1:9/v1", model="m", progress=False, executor="shout")
    df = bm.batch(["hello", "world", "hello"], **where)
    assert df["output"].tolist() == ["HELLO", "WORLD", "HELLO"]
    facts = df.attrs["batchmagic"]
    assert facts["shouted"] and facts["state"] == "done" and facts["ok"] == 3
    again = bm.batch(["hello", "world", "hello"], **where)  # the journal answers, as for any run
    assert again.attrs["batchmagic"]["cached"] == 3
    task = bm.submit(["quiet"], **where)
    assert task.wait(30)["output"].tolist() == ["QUIET"]


def test_a_run_stopped_before_it_ran_is_not_left_planned(monkeypatch):
    """An executor that refuses the run in prepare (as the Batch API's local check of its file
    does): the error reaches the caller and the run is recorded as aborted, so the line magics
    do not count it among the runs still going."""

    class RefusingExecutor(ShoutExecutor):
        def prepare(self) -> None:
            raise bm.ConfigError("refused before anything was sent")

    monkeypatch.setitem(EXECUTORS, "refuse", RefusingExecutor)
    with pytest.raises(bm.ConfigError, match="refused"):
        bm.batch(["a"], base_url="http://127.0.0.1:9/v1", model="m", progress=False,
                 cache=False, executor="refuse")
    last = bm._api.recent_runs()[-1]
    assert last.state == "aborted"
    assert all(r.state not in ("planned", "running") for r in bm._api.recent_runs())


def test_executor_must_fit_the_call():
    with pytest.raises(bm.ConfigError, match="executor='engine' does not fit"):
        bm.estimate(["a"], base_url="http://127.0.0.1:9/v1", model="m", executor="engine")
    with pytest.raises(bm.ConfigError, match="executor must be one of"):
        bm.estimate(["a"], base_url="http://127.0.0.1:9/v1", model="m", executor="nope")


# -- one option table ------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [bm.batch, bm.abatch, bm.submit, bm.estimate])
def test_every_run_function_shows_the_whole_table_as_its_signature(fn):
    params = list(inspect.signature(fn).parameters.values())
    assert [p.name for p in params[:2]] == ["inputs", "prompt"]
    options = params[2:]
    assert [p.name for p in options] == [o.name for o in _options.OPTIONS]
    for p, o in zip(options, _options.OPTIONS):
        assert p.kind is inspect.Parameter.KEYWORD_ONLY
        assert p.default == o.default, o.name
        assert p.annotation == o.annotation, o.name
    assert "inputs" in inspect.getdoc(fn) or fn.__doc__


def test_an_unknown_keyword_says_what_was_meant():
    with pytest.raises(bm.ConfigError, match="unknown option 'concurency'; did you mean "
                                             "'concurrency'"):
        bm.estimate(["a"], base_url="http://127.0.0.1:9/v1", model="m", concurency=4)


def test_the_magic_and_the_cli_take_their_flags_from_the_table():
    traits = _magic.BatchMagics.class_traits(config=True)
    assert set(traits) == {n for n, o in _magic.MAGIC_OPTIONS.items() if o.config}
    cell = {s for a in _magic.BatchMagics.batch.parser._actions for s in a.option_strings}
    table = {f for o in (*_options.OPTIONS, *_options.PARAM_FLAGS) if o.text is not None
             and o.name != "kind" for f in o.flags}
    assert table <= cell
    import argparse

    parser = argparse.ArgumentParser()
    cli._add_option_flags(parser)
    command = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}
    assert command == table - cli._CLI_OWN | {"-k", "--kind"}


# -- estimates are pure ------------------------------------------------------------------------


def test_an_estimate_writes_nothing_and_needs_no_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BATCHMAGIC_JOURNAL_DIR", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    est = bm.estimate(["one", "two"], provider="openai", model="gpt-4o-mini")
    assert est.rows == 2 and est.to_send == 2
    assert "OPENAI_API_KEY" in est.api_key and "none found" in est.api_key
    assert os.listdir(tmp_path) == []  # no .batchmagic/ left behind
    monkeypatch.setenv("OPENAI_API_KEY", "sk-SENTINEL-estimate-0000")
    est = bm.estimate(["one"], provider="openai", model="gpt-4o-mini")
    assert est.api_key == "$OPENAI_API_KEY (set)" and "SENTINEL" not in str(est)


def test_an_estimate_reads_the_journal_without_touching_it(tmp_path):
    from batchmagic.simulator import SimulatorThread

    folder = tmp_path / "journal"
    with SimulatorThread() as sim:
        where = dict(provider="simulator", base_url=sim.base_url, model="m", cache=str(folder),
                     progress=False)
        bm.batch(["a", "b"], **where)
        before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}
        est = bm.estimate(["a", "b", "c"], **where)
    assert (est.cached_rows, est.to_send) == (2, 1)
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}
    assert after == before


def test_requests_never_sent_are_not_counted_as_done():
    """A cancelled run's panel said "120/120 requests" when 118 were never sent."""
    import time

    from batchmagic.simulator import SimulatorThread

    with SimulatorThread(latency=0.2) as sim:
        task = bm.submit([f"r{i}" for i in range(60)], provider="simulator",
                         base_url=sim.base_url, model="m", concurrency=2, progress=False,
                         cache=False)
        deadline = time.monotonic() + 30
        while task.finished_count() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        task.cancel()
        df = task.wait(30)
    unsent = sum(isinstance(e, bm.NotSentError) for e in df["error"])
    assert unsent > 0
    assert task.progress.requests_done == 60 - unsent


def test_streaming_is_on_by_default_only_for_models_that_only_answer_streamed():
    from types import SimpleNamespace

    from batchmagic.executors.online import _streams
    from batchmagic.providers._presets import get_preset

    dashscope = SimpleNamespace(preset=get_preset("dashscope"))
    openai = SimpleNamespace(preset=get_preset("openai"))

    def o(model, stream=None, kind="chat"):
        return SimpleNamespace(model=model, stream=stream, kind=kind)

    assert _streams(o("qwq-plus"), dashscope)  # "QwQ ... support only streaming output"
    assert not _streams(o("qwen-plus"), dashscope)
    assert not _streams(o("qwq-plus", stream=False), dashscope)  # said: kept
    assert _streams(o("gpt-4o-mini", stream=True), openai)
    assert not _streams(o("qwq-plus", kind="embedding"), dashscope)
