"""``batchmagic run`` as a user runs it: the real command in a subprocess against the simulator in
another subprocess on 127.0.0.1. A bad output path, input file or flag is one line on stderr
(exit 2, no traceback) before anything is sent; counts are in rows; text stays text; a sentinel
key is in use and never shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from batchmagic.simulator import SimulatorProcess

SENTINEL = "sk-SENTINEL-cli-7d2e9b4a1c"
BROKEN_KEY = "sk-QWxF7pZk3Lm9\r\nRtYv2Hs8Nd4Bj6"


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess(api_key=SENTINEL) as s:
        yield s


@pytest.fixture
def fresh(sim):
    sim.reset()
    return sim


def cli(sim, *args: str, key: str = SENTINEL, cwd: Path | None = None,
        python: tuple[str, ...] = ("-m", "batchmagic.cli")) -> subprocess.CompletedProcess:
    """The command with the simulator as its provider; the key only in the environment."""
    env = dict(os.environ, BATCHMAGIC_SIM_API_KEY=key)
    where = ["--provider", "simulator", "--base-url", sim.base_url, "-m", "sim-chat", "-q"]
    done = subprocess.run([sys.executable, *python, "run", *args, *where], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert SENTINEL not in done.stdout + done.stderr
    return done


def assert_one_line_error(done: subprocess.CompletedProcess, *words: str) -> str:
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batchmagic: "), done.stderr
    for word in words:
        assert word in lines[0]
    return lines[0]


@pytest.fixture
def reviews(tmp_path) -> Path:
    path = tmp_path / "reviews.csv"
    path.write_text("id,text\n007,good\n0012,bad\n913,good\n", encoding="utf-8")
    return path


# -- counts are in rows -------------------------------------------------------------------------------


def test_counts_rows_not_requests_and_shows_rows_from_the_journal(fresh, reviews, tmp_path):
    out = tmp_path / "out.csv"
    first = cli(fresh, str(reviews), "-p", "Say {text}", "-o", str(out), "--temperature", "0")
    assert first.returncode == 0, first.stderr
    assert len(fresh.calls()) == 2  # "good" twice is one request at temperature 0
    assert first.stderr.strip().endswith("3 rows: 3 ok, 0 failed")
    again = cli(fresh, str(reviews), "-p", "Say {text}", "-o", str(out), "--temperature", "0")
    assert again.returncode == 0, again.stderr
    assert len(fresh.calls()) == 2  # nothing sent again
    assert again.stderr.strip().endswith("3 rows: 3 ok (3 from the journal), 0 failed")
    written = pd.read_csv(out, dtype=str)
    assert written["output"].tolist() == ["echo: Say good", "echo: Say bad", "echo: Say good"]


def test_no_cache_sends_every_row_again(fresh, reviews, tmp_path):
    out = tmp_path / "out.jsonl"
    for _ in range(2):
        done = cli(fresh, str(reviews), "-p", "Say {text}", "-o", str(out), "--no-cache",
                   "--temperature", "0")
        assert done.returncode == 0, done.stderr
        assert "from the journal" not in done.stderr
    assert len(fresh.calls()) == 4


def test_failed_rows_are_counted_and_the_exit_code_says_so(fresh, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n{"text": null}\n', encoding="utf-8")
    done = cli(fresh, str(src), "-o", str(tmp_path / "out.jsonl"))
    assert done.returncode == 1
    assert done.stderr.strip().endswith("2 rows: 1 ok, 1 failed")


# -- text stays text ------------------------------------------------------------------------------------


def test_identifiers_keep_their_text_and_clear_numbers_stay_numbers(fresh, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,zip,n,price,text\n007,02134,3,2.5,NA\n0012,10001,14,0.25,None\n",
                   encoding="utf-8")
    out = tmp_path / "out.jsonl"
    done = cli(fresh, str(src), "-p", "{id} {zip} {n} {price} {text}", "-o", str(out))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["007", "0012"]
    assert [r["zip"] for r in rows] == ["02134", "10001"]
    assert [r["n"] for r in rows] == [3, 14] and [r["price"] for r in rows] == [2.5, 0.25]
    assert [r["text"] for r in rows] == ["NA", "None"]  # words, not missing values
    # the simulator answers "echo: " + the prompt it received
    assert [r["output"] for r in rows] == ["echo: 007 02134 3 2.5 NA", "echo: 0012 10001 14 0.25 None"]


def test_jsonl_strings_stay_strings(fresh, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "007", "date": "2024-01-02", "text": "a"}\n'
                   '{"id": "008", "date": "2024-01-03", "text": "b"}\n', encoding="utf-8")
    out = tmp_path / "out.csv"
    done = cli(fresh, str(src), "-p", "{id} {date} {text}", "-o", str(out))
    assert done.returncode == 0, done.stderr
    written = pd.read_csv(out, dtype=str)
    assert written["id"].tolist() == ["007", "008"]
    assert written["output"].tolist() == ["echo: 007 2024-01-02 a", "echo: 008 2024-01-03 b"]


# -- -p is optional where the text is plain ------------------------------------------------------------


def test_txt_is_one_prompt_per_line_and_needs_no_template(fresh, tmp_path):
    src = tmp_path / "prompts.txt"
    src.write_text("first prompt\nsecond, with a comma\n\nthird\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    done = cli(fresh, str(src), "-o", str(out))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == ["first prompt", "second, with a comma", "third"]
    assert [r["output"] for r in rows] == ["echo: first prompt", "echo: second, with a comma",
                                          "echo: third"]
    assert done.stderr.strip().endswith("3 rows: 3 ok, 0 failed")


def test_a_table_with_one_text_column_needs_no_template(fresh, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("n,review\n1,lovely\n2,awful\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    done = cli(fresh, str(src), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert pd.read_csv(out)["output"].tolist() == ["echo: lovely", "echo: awful"]


def test_two_text_columns_and_no_template_is_a_one_line_error(fresh, reviews, tmp_path):
    out = tmp_path / "out.csv"
    line = assert_one_line_error(cli(fresh, str(reviews), "-o", str(out)), "-p", "id", "text")
    assert "{text}" in line or "{id}" in line
    assert fresh.calls() == [] and not out.exists()


# -- everything about the output path is checked before sending --------------------------------------


@pytest.mark.parametrize("name, words", [
    ("out.xlsx", (".csv", ".parquet")),
    ("no/such/folder/out.csv", ("does not exist",)),
    ("a_folder", ("folder",)),
    ("reviews.csv", ("input file",)),
], ids=["unknown-format", "missing-folder", "a-folder", "the-input"])
def test_a_bad_output_path_sends_nothing(fresh, reviews, tmp_path, name, words):
    (tmp_path / "a_folder.csv").mkdir()
    target = str(tmp_path / ("a_folder.csv" if name == "a_folder" else name))
    before = reviews.read_bytes()
    done = cli(fresh, str(reviews), "-p", "Say {text}", "-o", target)
    assert_one_line_error(done, *words)
    assert fresh.calls() == []
    assert reviews.read_bytes() == before
    assert not (tmp_path / "out.xlsx").exists() and not (tmp_path / "out.csv").exists()


def test_parquet_without_pyarrow_is_refused_before_sending(fresh, reviews, tmp_path):
    # this child cannot import pyarrow; pandas works without it
    blocked = ("-c", "import sys; sys.modules['pyarrow'] = None; "
                     "from batchmagic.cli import main; sys.exit(main())")
    out = tmp_path / "out.parquet"
    done = cli(fresh, str(reviews), "-p", "Say {text}", "-o", str(out), python=blocked)
    assert_one_line_error(done, "pyarrow")
    assert fresh.calls() == [] and not out.exists()


def test_parquet_round_trip(fresh, reviews, tmp_path):
    out = tmp_path / "out.parquet"
    done = cli(fresh, str(reviews), "-p", "Say {text}", "-o", str(out))
    assert done.returncode == 0, done.stderr
    frame = pd.read_parquet(out)
    assert frame["id"].tolist() == ["007", "0012", "913"]
    assert frame["error"].isna().all()


# -- bad input and flags: one line, nothing sent -----------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (("missing.csv", "-p", "{text}"), ("no such file", "missing.csv")),
    (("reviews.csv", "-p", "{text}", "--params", "{temperature: 0"), ("--params", "JSON")),
    (("reviews.csv", "-p", "{text}", "--params", "[1, 2]"), ("--params", "object")),
    (("reviews.csv", "-p", "{text}", "--params", '{"temperature": NaN}'), ("NaN",)),
    (("reviews.docx", "-p", "{text}"), ("cannot read", ".csv")),
    (("broken.jsonl", "-p", "{text}"), ("cannot read", "broken.jsonl")),
    (("reviews.csv", "-p", "Say {nope}"), ("nope",)),
], ids=["missing-input", "params-not-json", "params-not-object", "params-nan", "unknown-input",
        "broken-jsonl", "unknown-column"])
def test_bad_input_is_a_one_line_error(fresh, reviews, tmp_path, args, words):
    (tmp_path / "reviews.docx").write_text("x", encoding="utf-8")
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    done = cli(fresh, *args, "-o", "out.csv", cwd=tmp_path)
    assert_one_line_error(done, *words)
    assert fresh.calls() == [] and not (tmp_path / "out.csv").exists()


def test_a_key_with_a_line_break_is_refused_without_showing_it(fresh, reviews, tmp_path):
    done = cli(fresh, str(reviews), "-p", "Say {text}", "-o", str(tmp_path / "out.csv"),
               key=BROKEN_KEY)
    line = assert_one_line_error(done, "BATCHMAGIC_SIM_API_KEY", "control character")
    for start in range(len(BROKEN_KEY) - 3):
        assert BROKEN_KEY[start:start + 4] not in done.stdout + line
    assert fresh.calls() == []


def test_demo_checks_its_output_path_first(tmp_path):
    done = subprocess.run([sys.executable, "-m", "batchmagic.cli", "demo", "--simulator", "-q",
                           "-o", str(tmp_path / "out.xlsx")],
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(done, "out.xlsx")
    assert "reviews ->" not in done.stderr  # it never started
