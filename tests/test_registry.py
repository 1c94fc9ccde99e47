"""The mechanism registry (registry.py, specs.py, parameters.py) against what a hostile user could
hand in: one name claimed twice, plugins that exit at import, bad specs and seeds; and, with the
same fake distributions and records, what gate and the results readers do with bad input.

Each test reproduces a case that used to pass silently, crash with a traceback or start workers,
and asserts the behaviour now: a one-line error with exit 2 before any work, a gate that fails,
or a plugin listed as unavailable with its reason. Fake plugins are real distributions: a
``*.dist-info`` folder with ``entry_points.txt`` put on ``sys.path`` for the test.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

from attnbench import parameters, registry, specs
from attnbench.cli import main
from attnbench.report.gate import gate
from helpers import write_records

from _report_records import memory_records, speed_records

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers
def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("attnbench: error:"), err
    assert "Traceback" not in err
    return err


def write(records: list[dict[str, Any]], path: Path) -> Path:
    for rec in records:
        write_records([rec], path)
    return path


def fake_distribution(root: Path, dist: str, entries: dict[str, str], modules: dict[str, str]) -> Path:
    """A distribution ``dist`` registering ``entries`` (name -> "module:attr"), its modules beside it."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[attnbench.mechanisms]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for fake distributions; the plugin cache is reset around the test."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    registry.plugins.cache_clear()
    yield root
    registry.plugins.cache_clear()


IMPOSTOR = """
    from attnbench_plugins.full import FullAttention

    class Impostor(FullAttention):
        summary = "not the real full attention"
"""


# ----------------------------------------------------------------------------- 1. gate: absent metrics, bad baselines
def gate_baseline() -> list[dict[str, Any]]:
    return memory_records(sizes=(64, 128)) + speed_records(sizes=(64, 128))


@pytest.mark.parametrize("dropped", ["all", "peak_memory_bytes"])
def test_gate_fails_when_a_metric_is_absent_from_every_current_record(dropped: str) -> None:
    current = copy.deepcopy(gate_baseline())
    for rec in current:
        if dropped == "all":
            rec["metrics"] = {}
        else:
            rec["metrics"].pop(dropped, None)
    result = gate(current, gate_baseline())
    assert not result.passed
    absent = {f.metric for f in result.offenders if f.current == "not measured"}
    if dropped == "all":
        assert {"peak_memory_bytes", "flops", "time_median_s"} <= absent
    else:
        assert absent == {"peak_memory_bytes"}
        n_with = sum("peak_memory_bytes" in r["metrics"] and r["status"] == "ok" for r in gate_baseline())
        assert len([f for f in result.offenders if f.metric == "peak_memory_bytes"]) == n_with


@pytest.mark.parametrize("bad", [float("nan"), "12 GB", None])
def test_gate_reports_a_baseline_value_that_is_not_a_number(bad: Any) -> None:
    baseline = copy.deepcopy(gate_baseline())
    victim = next(r for r in baseline if r["status"] == "ok" and "flops" in r["metrics"])
    victim["metrics"]["flops"] = bad
    result = gate(gate_baseline(), baseline)
    assert not result.passed
    [finding] = [f for f in result.offenders if f.kind == "invalid baseline"]
    assert finding.metric == "flops" and victim["mechanism"] in finding.cell


def test_gate_cli_exits_1_on_an_absent_metric(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write(gate_baseline(), tmp_path / "base.jsonl")
    current = copy.deepcopy(gate_baseline())
    for rec in current:
        rec["metrics"].pop("peak_memory_bytes", None)
    cur = write(current, tmp_path / "cur.jsonl")
    assert main(["gate", str(cur), "--baseline", str(base)]) == 1
    assert "absent now" in capsys.readouterr().out


@pytest.mark.parametrize("flags, expected", [
    (["--alpha", "5"], "--alpha"),
    (["--alpha", "nan"], "--alpha"),
    (["--alpha", "0"], "--alpha"),
    (["--reference", "nosuch"], "nosuch"),
])
def test_gate_rejects_bad_alpha_and_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               flags: list[str], expected: str) -> None:
    base = write(gate_baseline(), tmp_path / "base.jsonl")
    assert main(["gate", str(base), "--baseline", str(base), *flags]) == 2
    assert expected in one_line_error(capsys)


# ----------------------------------------------------------------------------- 2. one name, two distributions
def test_two_distributions_claiming_one_name_are_an_error_naming_both(plugin_dir: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake_distribution(plugin_dir, "evil-attention", {"full": "evil_full:Impostor"}, {"evil_full": IMPOSTOR})
    info = registry.plugins()["full"]
    assert not info.availability.ok and info.cls is None
    assert main(["list", "mechanisms"]) == 2
    captured = capsys.readouterr()
    assert "evil-attention" in captured.err and "attnbench" in captured.err.replace("evil-attention", "")
    assert captured.err.strip().count("\n") == 0
    with pytest.raises(registry.UserError, match="evil-attention"):
        registry.mechanism("full")
    with pytest.raises(registry.UserError, match="evil-attention"):
        registry.resolve("full")


def test_run_refuses_a_claimed_name_before_any_worker(plugin_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    fake_distribution(plugin_dir, "evil-attention", {"full": "evil_full:Impostor"}, {"evil_full": IMPOSTOR})
    out = tmp_path / "out.jsonl"
    assert main(["run", "memory", "--preset", "ci", "--mechanisms", "full[stride=2]", "--sizes", "16",
                 "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "evil-attention" in err and "registered by 2 distributions" in err
    assert not out.exists()


def test_the_same_distribution_seen_twice_is_not_a_conflict(plugin_dir: Path) -> None:
    """A distribution found twice on the path (same name, version, target) is one claimant."""
    for sub in ("a", "b"):
        fake_distribution(plugin_dir / sub, "twice", {"twice-mech": "twice_mod:Impostor"}, {"twice_mod": IMPOSTOR})
        sys.path.insert(0, str(plugin_dir / sub))
    try:
        registry.plugins.cache_clear()
        info = registry.plugins()["twice-mech"]
        assert info.conflict == "" and info.availability.ok, info.availability
    finally:
        for sub in ("a", "b"):
            sys.path.remove(str(plugin_dir / sub))


# ----------------------------------------------------------------------------- 14. plugins that exit at import
@pytest.mark.parametrize("body, reason", [
    ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    ("raise BaseException('no thanks')\n", "BaseException: no thanks"),
    ("import os\nraise GeneratorExit()\n", "GeneratorExit"),
])
def test_plugin_exiting_at_import_is_unavailable(plugin_dir: Path, capsys: pytest.CaptureFixture[str],
                                                 body: str, reason: str) -> None:
    fake_distribution(plugin_dir, "rude-plugin", {"rude": "rude_mod:Rude"}, {"rude_mod": body})
    info = registry.plugins()["rude"]
    assert not info.availability.ok and reason in info.availability.reason
    assert registry.plugins()["full"].availability.ok  # the others are untouched
    assert main(["list", "mechanisms", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)["mechanisms"]}
    assert listed["rude"]["available"] is False and reason in listed["rude"]["reason"]


def test_plugin_whose_availability_check_exits_is_unavailable(plugin_dir: Path) -> None:
    fake_distribution(plugin_dir, "rude-plugin", {"rude": "rude_mod:Rude"}, {"rude_mod": IMPOSTOR + """
    import sys

    class Rude(Impostor):
        @classmethod
        def availability(cls):
            sys.exit("bye")
    """})
    info = registry.plugins()["rude"]
    assert not info.availability.ok and "SystemExit: bye" in info.availability.reason


# ----------------------------------------------------------------------------- 11. mechanism specs
BAD_SPECS = {
    "psal[k=3]]": "one [...] at the end",
    "psal[k=-1]": "k must be",
    "psal[k=abc]": "k must be an integer",
    "local[window=0]": "window must be a positive integer",
    "full[nonsense=1]": "unknown parameter 'nonsense'",
    "psal[k=[/x]]": "bad mechanism spec",
    "psal[k=" + "[" * 3000 + "]": "at most",
    "psal[k=" + "1" * 5000 + "]": "at most",
    "full[stride=1e999]": "finite",
    "full[stride=2,stride=3]": "twice",
    "full[stride]": "bad parameter",
}


@pytest.mark.parametrize("spec", list(BAD_SPECS))
def test_bad_mechanism_spec_is_one_line_before_any_worker(spec: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import attnbench.executors as executors

    def no_workers(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an executor was made for bad input")

    monkeypatch.setattr(executors, "make_executor", no_workers)
    out = tmp_path / "out.jsonl"
    assert main(["run", "memory", "--preset", "ci", "--mechanisms", spec, "--sizes", "16", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert BAD_SPECS[spec] in err and len(err) < 400
    assert not out.exists()


@pytest.mark.parametrize("seed", ["99999999999999999999999", str(2**63)])
def test_huge_seed_is_one_line_before_any_worker(seed: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["run", "memory", "--preset", "ci", "--mechanisms", "full", "--sizes", "16", "--seed", seed,
                 "--out", str(out)]) == 2
    assert "seed" in one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("spec, params", [
    ("full[stride=2,similarity=dot]", {"stride": 2, "similarity": "dot"}),
    ("psal-1[search_k=1]", {"search_k": 1}),
    ("local[block=None]", {"block": None}),
    ("full[temperature=0.5]", {"temperature": 0.5}),
    ("full[similarity='dot']", {"similarity": "dot"}),
])
def test_good_specs_still_parse(spec: str, params: dict[str, Any]) -> None:
    name, parsed = specs.split_spec(spec)
    assert parsed == params and name == spec.split("[")[0]
    registry.validate_specs([spec])


def test_parameters_come_from_the_constructor_signature() -> None:
    psal = parameters.parameters(registry.plugins()["psal"].cls)
    assert psal["k"].types == (int,) and psal["search_k"].optional
    assert {"patch_size", "similarity", "temperature"} <= set(psal)
    local = parameters.parameters(registry.plugins()["local"].cls)
    assert {"window", "block", "patch_size"} <= set(local) and "k" not in local


# ----------------------------------------------------------------------------- 13. results readers check types


@pytest.mark.parametrize("field, value, expected", [
    ("metrics", [], "'metrics' must be an object"),
    ("params", "x", "'params' must be an object"),
    ("mechanism", None, "'mechanism' must be a string"),
    ("size", "abc", "'size' must be an integer"),
    ("size", True, "'size' must be an integer"),
    ("size", 0, "positive"),
    ("status", "exploded", "unknown status 'exploded'"),
    ("schema", "1", "'schema' must be an integer"),
    ("mode", "sideways", "unknown mode"),
])
@pytest.mark.parametrize("verb", ["report", "compare", "gate"])
def test_readers_check_field_types(tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str,
                                   field: str, value: Any, expected: str) -> None:
    good = write(memory_records(sizes=(64,)), tmp_path / "good.jsonl")
    bad_records = memory_records(sizes=(64,))
    bad_records[1][field] = value
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in bad_records))
    argv = {"report": ["report", str(bad)], "compare": ["compare", str(good), str(bad)],
            "gate": ["gate", str(bad), "--baseline", str(good)]}[verb]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert f"{bad}:2:" in err and expected in err


def test_report_on_an_empty_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["report", str(empty)]) == 2
    assert "no records" in one_line_error(capsys)


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder that cannot be written: read-only by mode, or (as root, who ignores modes) under a file."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        return folder / "out"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return blocker / "out"


@pytest.mark.parametrize("verb", ["report", "compare"])
def test_out_folder_that_cannot_be_written(tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str) -> None:
    good = write(memory_records(sizes=(64,)), tmp_path / "good.jsonl")
    out = unwritable_folder(tmp_path)
    argv = ["report", str(good), "--out", str(out), "--format", "md"] if verb == "report" else \
        ["compare", str(good), str(good), "--out", str(out)]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert "--out" in err and str(out) in err


def test_read_only_filesystem_if_the_machine_has_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """/sys is mounted read-only in most containers: the real EROFS case, where available."""
    target = Path("/sys/attnbench-report")
    probe = subprocess.run(["sh", "-c", f"mkdir {target} 2>&1"], capture_output=True, text=True)
    if "Read-only file system" not in probe.stdout:
        if probe.returncode == 0:
            target.rmdir()
        pytest.skip("no read-only file system here")
    good = write(memory_records(sizes=(64,)), tmp_path / "good.jsonl")
    assert main(["report", str(good), "--out", str(target), "--format", "md"]) == 2
    assert "Read-only file system" in one_line_error(capsys)


def test_an_entry_point_named_like_another_plugins_variant_is_an_error(plugin_dir: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``psal-3`` registered by a third party would silently replace PSAL with k=3."""
    fake_distribution(plugin_dir, "evil-attention", {"psal-3": "evil_full:Impostor"}, {"evil_full": IMPOSTOR})
    with pytest.raises(registry.UserError, match="evil-attention.*variant of 'psal'"):
        registry.resolve("psal-3")
    registry.resolve("psal-1")  # the other variants are unaffected
    assert main(["list", "mechanisms"]) == 2
    assert "psal-3" in one_line_error(capsys)


def test_malformed_declarations_and_a_constructor_that_exits_break_nothing(plugin_dir: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    fake_distribution(plugin_dir, "odd-plugin", {"odd": "odd_mod:Odd"}, {"odd_mod": IMPOSTOR + """
    import sys

    class Odd(Impostor):
        variants = 5
        summary = None

        @classmethod
        def parse_variant(cls, suffix):
            raise TypeError("a buggy parser")

        def __init__(self, **kw):
            sys.exit("constructors must not exit")
    """})
    assert main(["list", "mechanisms"]) == 0
    assert "odd" in capsys.readouterr().out
    assert registry.plugins()["odd"].variants == ("odd",)
    with pytest.raises(registry.UserError, match="unknown mechanism 'odd-3'"):
        registry.resolve("odd-3")
    registry.validate_specs(["odd"])  # not bad input: the cell will record the plugin's failure
