"""Suite files are strict: every key at every level is one attnbench knows, else one line naming it."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from attnbench import suites
from attnbench.errors import UserError

BASE = '''
name = "strict"
description = "a suite file with one mistake"
runner = "attnbench.runners.microbench:run"
default_preset = "default"

[grid]
mechanisms = ["full"]
sizes = [8]
channels = 2
patch_size = 3
timeout = 60

[options]
metrics = ["time"]

[presets.quick]
sizes = [8]
[presets.quick.options]
min_repeats = 2

[gate]
reference = "full"
[gate.tolerances]
peak_memory_bytes = 0.05
'''


def _suite(tmp_path: Path, text: str) -> str:
    path = tmp_path / "strict.toml"
    path.write_text(text)
    return str(path)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_the_base_file_and_every_shipped_suite_are_accepted(tmp_path: Path) -> None:
    assert len(suites.load(_suite(tmp_path, BASE)).cells()) == 1
    for name in suites.suite_names():
        suite = suites.load(name)
        suite.check_options()  # every preset's options, the sweep tables of search included


@pytest.mark.parametrize("edit, needle", [
    (lambda t: "iterations = 3\n" + t, "unknown key 'iterations'; valid: name, description, runner"),
    (lambda t: t.replace("[options]", "[optoins]"), "unknown key 'optoins'; valid: name"),
    (lambda t: t.replace("[grid]\n", "[grid]\nsize = [8]\n"), "[grid]: unknown key 'size'; valid: mechanisms, sizes"),
    (lambda t: t.replace("[presets.quick]\n", "[presets.quick]\nsizez = [8]\n"),
     "[presets.quick]: unknown key 'sizez'; valid: mechanisms, sizes"),
    (lambda t: t.replace("[presets.quick.options]", "[presets.quick.optoins]"), "[presets.quick]: unknown key 'optoins'"),
    (lambda t: t.replace("reference = ", "refrence = "), "[gate]: unknown key 'refrence'; valid: reference, tolerances, alpha"),
    (lambda t: t.replace("[gate.tolerances]\n", "[gate.tolerances]\npeak_memroy_bytes = 0.1\n"),
     "[gate.tolerances]: unknown key 'peak_memroy_bytes'; valid: peak_memory_bytes"),
    (lambda t: t.replace("peak_memory_bytes = 0.05", "peak_memory_bytes = -1"), "must be a relative change >= 0"),
    (lambda t: t.replace('default_preset = "default"', 'default_preset = "quik"'), "default_preset 'quik' is not a preset"),
    (lambda t: t + "[presets.slow]\ntimeout = 5\n", None),  # a valid addition: accepted
])
def test_a_typo_at_any_level_is_one_line_naming_the_key(tmp_path: Path, edit, needle: str | None) -> None:
    path = _suite(tmp_path, edit(BASE))
    if needle is None:
        assert suites.load(path).cells("slow")
        return
    with pytest.raises(UserError) as exc:
        suites.load(path).cells()
    assert needle in _one_line(exc)


def test_a_typo_in_a_preset_not_run_is_found_too(tmp_path: Path) -> None:
    path = _suite(tmp_path, BASE.replace("min_repeats = 2", "min_repeat = 2"))
    with pytest.raises(UserError) as exc:
        suites.load(path).cells()  # the default preset: quick's options are checked all the same
    assert "preset 'quick': unknown option 'min_repeat'; valid:" in _one_line(exc)


def test_a_misspelled_per_size_mechanism_is_refused(tmp_path: Path) -> None:
    path = _suite(tmp_path, BASE + "[per_size.ful]\nstride = { 8 = 2 }\n")
    with pytest.raises(UserError) as exc:
        suites.load(path).cells()
    assert "ful" in _one_line(exc)


SEARCH = '''
name = "strict-search"
runner = "attnbench.runners.search_quality:run"
[grid]
mechanisms = ["psal-1"]
sizes = [16]
channels = 3
patch_size = 3
timeout = 60
[options]
iterations = [1]
[options.sweep.psal-1]
'''


@pytest.mark.parametrize("table, needle", [
    ("iterations = [1, 2]\n", None),
    ("iteratoins = [1, 2]\n", "unknown parameter 'iteratoins'"),
    ("iterations = [1, 2]\nsearch_k = [2, 3]\n", None),  # every combination of several knobs
    ("iterations = [1, 2]\nsearch_k = 2\n", "non-empty list"),
    ("iterations = []\n", "non-empty list"),
    ("iterations = [-1]\n", "iterations"),
    # values keyed by image size
    ("iterations = { 16 = [1, 2], 32 = [3] }\n", None),  # a table keyed by size; a size not run is allowed
    ("iterations = { 16 = [1, 2] }\nsearch_k = [2, 3]\n", None),  # beside a list for every size
    ("iterations = { big = [1, 2] }\n", "option sweep.psal-1.iterations: size 'big' must be a positive integer (px), "
     "e.g. { 256 = [64, 256], 512 = [1024] }"),
    ("iterations = { 0 = [1] }\n", "size '0' must be a positive integer"),
    ("iterations = { 016 = [1] }\n", "size '016' must be a positive integer"),  # never matches a size
    ("iterations = {}\n", "option sweep.psal-1.iterations must be a list of values or a table of size = [values]"),
    ("iterations = { 16 = [] }\n", "option sweep.psal-1.iterations.16 must be a non-empty list of values, got []"),
    ("iterations = { 16 = 2 }\n", "option sweep.psal-1.iterations.16 must be a non-empty list of values, got 2"),
    ("iterations = { 16 = [1], 32 = [-1] }\n", "psal-1[iterations=-1]: iterations must be an integer >= 0"),
    ("iterations = { 32 = [1], 64 = [2] }\n", "suite 'strict-search': option sweep.psal-1.iterations has no values "
     "for 16 px: add 16 = [...] to its table (it has values for 32, 64 px)"),
])
def test_search_sweep_tables_are_checked(tmp_path: Path, table: str, needle: str | None) -> None:
    path = _suite(tmp_path, SEARCH + table)
    if needle is None:
        assert suites.load(path).cells()
        return
    with pytest.raises(UserError) as exc:
        suites.load(path).cells()
    assert needle in _one_line(exc)


def test_a_size_keyed_sweep_gives_each_size_its_points(tmp_path: Path) -> None:
    from attnbench.runners.search_quality import _sweep

    text = SEARCH.replace("sizes = [16]", "sizes = [16, 32]") + "iterations = { 16 = [1, 2], 32 = [5] }\nsearch_k = [2, 3]\n"
    cells = suites.load(_suite(tmp_path, text)).cells()
    points = {cell.size: _sweep(cell, {"iterations": 10}) for cell in cells}
    assert points[16] == ("iterations,search_k", [{"iterations": 1, "search_k": 2}, {"iterations": 1, "search_k": 3},
                                                  {"iterations": 2, "search_k": 2}, {"iterations": 2, "search_k": 3}])
    assert points[32] == ("iterations,search_k", [{"iterations": 5, "search_k": 2}, {"iterations": 5, "search_k": 3}])


def test_a_size_without_sweep_values_is_refused_before_any_cell(tmp_path: Path) -> None:
    from attnbench.runners.search_quality import _sweep

    text = SEARCH + "iterations = { 16 = [1, 2] }\n"
    suite = suites.load(_suite(tmp_path, text))
    with pytest.raises(UserError) as exc:
        suite.cells(sizes=[16, 32, 48])  # --sizes
    assert "option sweep.psal-1.iterations has no values for 32, 48 px: add 32 = [...], 48 = [...]" in _one_line(exc)
    # a preset not run is checked at its own sizes
    with pytest.raises(UserError) as exc:
        suites.load(_suite(tmp_path, text + "[presets.big]\nsizes = [16, 64]\n")).cells()
    assert "preset 'big': option sweep.psal-1.iterations has no values for 64 px" in _one_line(exc)
    # a cell built without the suite's check: its size is refused when its points are asked for
    cell = replace(suite.cells()[0], size=32)
    with pytest.raises(UserError) as exc:
        _sweep(cell, {"iterations": 10})
    assert "option sweep.psal-1.iterations has no values for 32 px" in _one_line(exc)


def test_a_sweep_of_an_unknown_mechanism_is_refused(tmp_path: Path) -> None:
    path = _suite(tmp_path, SEARCH.replace("[options.sweep.psal-1]", "[options.sweep.faiss-knnn]") + "nprobe = [1]\n")
    with pytest.raises(UserError) as exc:
        suites.load(path).cells()
    assert "faiss-knnn" in _one_line(exc)
