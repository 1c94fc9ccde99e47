"""The run's results file (attnbench.resultsfile): one run per file (the lock names its holder),
resume state (a corrupt complete line refused with its number, a torn last line dropped and said,
another suite's file refused), an earlier file moved aside, said."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from attnbench import schema
from attnbench.resultsfile import ResultsFile
from attnbench.suites import load

from conftest import write_suite
from helpers import one_line_exit_2 as _one_line_exit_2, run_cli
from cell_fixtures import OK


# ----------------------------------------------------------------------------- one run per results file
def test_a_second_run_on_the_same_results_file_is_refused_naming_the_holder(
        tmp_path: Path, worker_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.jsonl"
    with ResultsFile.open(out):
        for extra in ([], ["--resume"]):
            err = _one_line_exit_2(run_cli("run", str(write_suite(tmp_path, [OK])), "--out", str(out), *extra), capsys,
                                   "in use by another attnbench run")
            assert f"PID {os.getpid()}" in err
    assert run_cli("run", str(write_suite(tmp_path, [OK])), "--out", str(out), "--no-table") == 0  # released


# ----------------------------------------------------------------------------- resume and the file
def test_resume_stops_at_a_corrupt_complete_line_with_its_number(tmp_path: Path, worker_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    suite = write_suite(tmp_path, [OK, 7])
    first = schema.make_record(load(str(suite)).cells()[0], "ok", metrics={"value": -1})
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps(first) + "\n" + "{garbage\n")
    before = out.read_bytes()
    _one_line_exit_2(run_cli("run", str(suite), "--out", str(out), "--resume"), capsys, f"{out}:2: not an attnbench record")
    assert out.read_bytes() == before  # nothing appended after the corrupt line


def test_resume_into_another_suites_results_file_is_refused(tmp_path: Path, worker_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    suite = write_suite(tmp_path, [OK])
    other = schema.make_record(load("memory").cells("ci")[0], "ok", metrics={"flops": 1})
    out = tmp_path / "memory-ci.jsonl"
    out.write_text(json.dumps(other) + "\n")
    before = out.read_bytes()
    _one_line_exit_2(run_cli("run", str(suite), "--out", str(out), "--resume"), capsys,
                     f"--resume: {out} holds results of suite 'memory', not 'fixture'")
    assert out.read_bytes() == before  # nothing appended
    with ResultsFile.open(out, resume=True, suite="memory") as results:  # its own suite resumes
        assert other["key"] in results.done


def test_a_dropped_torn_line_and_a_moved_file_are_announced(tmp_path: Path, worker_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    suite = write_suite(tmp_path, [OK])
    out = tmp_path / "out.jsonl"
    first = schema.make_record(load(str(suite)).cells()[0], "ok", metrics={"value": -1})
    out.write_text(json.dumps(first) + "\n" + '{"schema": 1, "su')
    assert run_cli("run", str(suite), "--out", str(out), "--resume", "--no-table") == 0
    err = capsys.readouterr().err
    assert "dropped the unfinished last line" in err and "line 2" in err
    assert "nothing to run: all 1 cells are already in" in err and "cells: ;" not in err
    assert run_cli("run", str(suite), "--out", str(out), "--no-table") == 0
    err = capsys.readouterr().err
    (backup,) = tmp_path.glob("out.jsonl.*.prev")
    assert f"previous results moved to {backup}" in err.replace("\n", "")
