"""Records across versions: every earlier schema version reads (migrated), a newer one is refused
with a line saying to upgrade, and each record names the definition it was measured under."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnbench import definition, schema
from attnbench.cells import CellSpec
from attnbench.errors import UserError
from attnbench.resultsfile import ResultsFile

FIXTURES = Path(__file__).parent / "fixtures"


def test_every_committed_old_version_reads_as_the_current_one() -> None:
    versions = sorted(int(p.stem.split("-v")[1]) for p in FIXTURES.glob("records-v*.jsonl"))
    assert versions == list(range(1, schema.SCHEMA_VERSION)), "commit a fixture file for each old version"
    for version in versions:
        records = schema.read(FIXTURES / f"records-v{version}.jsonl")
        assert records and all(r["schema"] == schema.SCHEMA_VERSION for r in records)
        assert all(r["definition"] == definition.FIRST_DEFINITION for r in records)


def test_a_newer_schema_is_refused_naming_the_upgrade(tmp_path: Path) -> None:
    rec = json.loads((FIXTURES / "records-v1.jsonl").read_text().splitlines()[0])
    rec.update(schema=schema.SCHEMA_VERSION + 1, definition={})
    path = tmp_path / "new.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(UserError, match="newer attnbench.*upgrade"):
        schema.read(path)


def _cell(size: int = 1) -> CellSpec:
    return CellSpec(suite="t", runner="cell_fixtures:run", mechanism="full", size=size)


def test_a_record_names_its_runner_mechanism_and_instrument_definition() -> None:
    from attnbench.measure import DEFINITION_VERSION

    rec = schema.make_record(_cell(), "ok")
    assert rec["definition"] == {"runner": 1, "mechanism": 1, "measure": DEFINITION_VERSION}
    # a definition written before the instruments had a version reads as their first one
    assert definition.difference({"runner": 1, "mechanism": 1}, dict(definition.FIRST_DEFINITION)) == ""
    assert definition.difference({"runner": 1, "mechanism": 1}, rec["definition"]) == f"measure 1 -> {DEFINITION_VERSION}"
    assert schema.check_record(rec) == ""


def test_resume_runs_again_a_cell_measured_under_another_definition(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "r.jsonl"
    same, changed = _cell(1), _cell(2)
    with ResultsFile.open(path) as results:
        results.append(schema.make_record(same, "ok"))
        results.append(schema.make_record(changed, "ok"))
    real = definition.of_cell
    monkeypatch.setattr(definition, "of_cell",
                        lambda spec: {**real(spec), "runner": 2} if spec.size == 2 else real(spec))
    notes: list[str] = []
    with ResultsFile.open(path, resume=True) as results:
        todo = results.todo([same, changed], notes.append)
    assert todo == [changed]
    assert len(notes) == 1 and "another definition" in notes[0] and "runner 1 -> 2" in notes[0]
