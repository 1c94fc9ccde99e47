"""CLI conventions: ``python -m attnbench``, ``--json``, no wrapping when piped, NO_COLOR,
markup-safe labels, and ``attnbench estimate`` (what fits a memory budget, and how fast)."""
from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.cli import main
from attnbench.commands.estimate import parse_bytes
from attnbench.registry import plugins
from attnbench.schema import read

from conftest import write_suite
from helpers import cli_process as cli

REPO = Path(__file__).resolve().parents[1]


def on_a_terminal(*args: str, env: dict[str, str | None]) -> bytes:
    """Run ``python -m attnbench ARGS`` with stdout on a pseudo-terminal (``env``: None removes a variable)."""
    master, slave = pty.openpty()
    full_env = {**os.environ, "COLUMNS": "200", "TERM": "xterm-256color", **env}
    proc = subprocess.Popen([sys.executable, "-m", "attnbench", *args], stdout=slave, stderr=subprocess.PIPE,
                            env={k: v for k, v in full_env.items() if v is not None}, cwd=REPO)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=120)
    os.close(master)
    assert proc.returncode == 0, proc.stderr.read()
    return out


def test_python_dash_m_attnbench() -> None:
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("attnbench "), done.stderr


def test_list_json_and_piped_rows_do_not_wrap() -> None:
    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    names = {m["name"] for m in doc["mechanisms"]}
    assert names == set(plugins())
    psal = next(m for m in doc["mechanisms"] if m["name"] == "psal")
    assert psal["parameters"]["k"]["type"] == "an integer" and psal["parameters"]["k"]["default"] == 1
    memory = next(s for s in doc["suites"] if s["name"] == "memory")
    assert memory["presets"]["ci"]["sizes"] and memory["default_preset"] in memory["presets"]
    table = cli("list")  # piped, COLUMNS=80: every summary stays whole on its row
    assert table.returncode == 0, table.stderr
    for info in plugins().values():
        if info.summary:
            assert any(info.summary in line for line in table.stdout.splitlines()), info.summary
    assert "\x1b[" not in table.stdout


def test_no_color_means_no_escape_codes_even_on_a_terminal() -> None:
    styled = on_a_terminal("list", "suites", env={"FORCE_COLOR": None, "NO_COLOR": None})
    assert b"\x1b[" in styled  # bold titles and headers: the check below can fail
    plain = on_a_terminal("list", "suites", env={"NO_COLOR": "1"})
    assert b"\x1b[" not in plain and b"memory" in plain


def test_run_prints_labels_as_typed_not_as_markup(tmp_path: Path, worker_path: Path) -> None:
    suite = write_suite(tmp_path, [1], mechanisms=("full[stride=2]",))
    done = cli("run", str(suite), "--out", str(tmp_path / "out.jsonl"), "--no-table",
               env={"PYTHONPATH": os.environ["PYTHONPATH"]})
    assert done.returncode == 0, done.stderr
    assert "full[stride=2] 1px" in done.stderr, done.stderr


# ----------------------------------------------------------------------------- estimate
@pytest.mark.parametrize("text, expected", [("4GiB", 4 * 2**30), ("512 MiB", 512 * 2**20), ("8GB", 8 * 10**9),
                                            ("1e9", 10**9), ("0.5gib", 2**29)])
def test_budget_units(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("argv, expected", [
    (["--size", "384", "--budget", "4 parsecs"], "--budget"),
    (["--size", "384", "--budget", "-1GiB"], "--budget"),
    (["--size", "384", "--budget", "1e400"], "--budget: '1e400' is not a finite number"),
    (["--size", "384", "--budget", "1e30GiB"], "--budget: '1e30GiB' is too large"),
    (["--size", "0"], "--size"),
    (["--size", "64", "--patch-size", "4"], "odd"),
    (["--size", "4", "--patch-size", "7"], "larger than --size"),
    (["--size", "64", "--mechanisms", "psal[k=0]"], "k must be"),
])
def test_estimate_bad_input(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and err.count("\n") == 0


def test_estimate_json_fits_the_budget_it_was_given(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["estimate", "--size", "384", "--channels", "64", "--patch-size", "3", "--mode", "fwd+bwd", "--json"]
    assert main([*args, "--budget", "1TiB"]) == 0
    wide = json.loads(capsys.readouterr().out)
    rows = {r["mechanism"]: r for r in wide["mechanisms"] if r["status"] == "ok"}
    expected = {v for info in plugins().values() if info.availability.ok for v in info.variants}
    assert set(rows) == expected
    rate = wide["yardstick_flops_per_s"]
    for r in rows.values():
        assert r["expected_time_s"] == pytest.approx(r["flops"] / (rate * (r["matmul_share"] or 1.0)))
        assert r["memory_gib"] == pytest.approx(r["memory_bytes"] / 2**30)
    assert rows["local"]["matmul_share"] == pytest.approx(0.015) and rows["full"]["matmul_share"] is None  # fwd+bwd
    # a budget between psal-3's and full's needs: psal-3 fits, full does not
    budget = (rows["psal-3"]["needed_bytes"] + rows["full"]["needed_bytes"]) // 2
    assert main([*args, "--budget", str(budget)]) == 0
    tight = {r["mechanism"]: r for r in json.loads(capsys.readouterr().out)["mechanisms"]}
    assert tight["psal-3"]["fits"] and not tight["full"]["fits"]
    assert all(r["fits"] == (r["needed_bytes"] <= budget) for r in tight.values() if r["status"] == "ok")


def test_estimate_measure_confirms_through_the_memory_suite(tmp_path: Path) -> None:
    out = tmp_path / "measured.jsonl"
    done = cli("estimate", "--size", "16", "--channels", "4", "--patch-size", "3", "--budget", "1GiB",
               "--mechanisms", "full", "--measure", "--json", "--out", str(out), "--timeout", "200")
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)["mechanisms"]
    measured = row["measured"]
    assert measured["status"] == "ok", measured
    assert measured["peak_memory_bytes"] > 0 and measured["time_median_s"] > 0
    [record] = read(out)
    assert record["suite"] == "memory" and record["size"] == 16 and record["channels"] == 4
    assert record["metrics"]["peak_memory_bytes"] == measured["peak_memory_bytes"]


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """``attnbench list | head``: when stdout's reader is gone, stop quietly with 141 (128 + SIGPIPE)."""
    env = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "attnbench", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=REPO)
    proc.stdout.close()  # before the child has written anything (it is still importing)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 141, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err


@pytest.mark.parametrize("verb, says, never", [
    ("run", "re-run with --resume", "report files"),
    ("report", "report files it was writing may be incomplete", "--resume"),
    ("list", "", "--resume"),
])
def test_ctrl_c_says_what_this_command_leaves_behind(verb: str, says: str, never: str,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(f"attnbench.commands.{verb}"), "run", interrupted)
    argv = {"run": ["run", "memory"], "report": ["report", "results/published"], "list": ["list"]}[verb]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnbench: interrupted") and len(err.splitlines()) == 1
    assert says in err and never not in err


@pytest.mark.parametrize("signame, code", [("SIGHUP", 129), ("SIGTERM", 130)])
def test_a_hangup_or_sigterm_ends_the_run_with_one_line(signame: str, code: int, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import importlib
    import signal

    from attnbench import runloop

    def hung_up(args: object) -> int:
        with runloop.sigterm_as_interrupt():
            signal.raise_signal(getattr(signal, signame))
        return 0

    def unhandled(signum: int, frame: object) -> None:  # without the run's handler: fail, do not kill pytest
        raise AssertionError(f"{signame} not handled by the run")

    monkeypatch.setattr(importlib.import_module("attnbench.commands.run"), "run", hung_up)
    previous = signal.signal(getattr(signal, signame), unhandled)
    try:
        assert main(["run", "memory"]) == code
    finally:
        signal.signal(getattr(signal, signame), previous)
    err = capsys.readouterr().err.strip()
    assert err == f"attnbench: interrupted ({signame}); finished cells are saved (re-run with --resume)"


def test_a_hangup_ignored_by_nohup_stays_ignored() -> None:
    import signal

    from attnbench import runloop

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with runloop.sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            signal.raise_signal(signal.SIGHUP)  # ignored: the run goes on
    finally:
        signal.signal(signal.SIGHUP, previous)


# ----------------------------------------------------------------------------- run: what is refused up front
@pytest.mark.parametrize("argv, needle", [
    (["--partition", "gpu"], "--partition is an option of --executor slurm, not of --executor local"),
    (["--executor", "slurm", "--jobs", "2"], "--jobs is an option of --executor local, not of --executor slurm"),
    (["--cpus-per-cell", "4"], "--cpus-per-cell is an option of --executor ray or slurm"),
])
def test_an_option_of_another_executor_is_an_error(argv: list[str], needle: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.jsonl"
    code = main(["run", "memory", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    if "option of --executor" not in err and "unrecognized" in err:
        pytest.skip("that executor's package is not installed")
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("argv, name", [
    ([], "memory-table1.jsonl"),
    (["--channels", "8", "--patch-size", "3"], "memory-table1-C8-p3.jsonl"),
    (["--channels", "16", "--patch-size", "7"], "memory-table1.jsonl"),  # the preset's own values
    (["--sizes", "64", "--mechanisms", "full", "--mode", "both"], "memory-table1.jsonl"),  # a choice of its cells
    (["--batch", "2", "--dtype", "float64", "--seed", "1"], "memory-table1-B2-float64-seed1.jsonl"),
])
def test_the_default_file_is_named_from_the_grid_that_ran(argv: list[str], name: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.errors import UserError
    from attnbench.resultsfile import ResultsFile

    opened: list[Path] = []

    def stop(path: Path, **kwargs: object) -> None:
        opened.append(Path(path))
        raise UserError("stopped before any cell")

    monkeypatch.setattr(ResultsFile, "open", staticmethod(stop))
    assert main(["run", "memory", "--out", str(tmp_path), *argv]) == 2
    assert opened == [tmp_path / name]


def test_an_unwritable_cache_is_refused_before_any_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ATTNBENCH_CACHE", str(tmp_path / "file" / "cache"))
    out = tmp_path / "o.jsonl"
    assert main(["run", "colorization", "--preset", "smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnbench: error: ATTNBENCH_CACHE=") and "cannot be written" in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("suite", ["reconstruction", "speed"])
def test_jobs_with_a_suite_that_records_time_is_refused_before_any_work(suite: str, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.jsonl"
    assert main(["run", suite, "--jobs", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"attnbench: error: --jobs 2: suite {suite} measures time, and cells running side by side "
                   "disturb each other's timings; use --jobs 1")
    assert not out.exists()  # refused before the results file, the calibration or the kernel build
