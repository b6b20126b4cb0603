"""The interval record's declared types (netdiag/analysis/records.py) against the contract's
machine form (docs/schema/watch-interval.schema.json): every field the schema names is declared,
the required ones as required, and nothing is declared the schema does not know."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from netdiag.analysis import records

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "schema" /
                     "watch-interval.schema.json").read_text())
PAIRS = [(records.IntervalRecord, SCHEMA), (records.DestinationRow, SCHEMA["$defs"]["destination"]),
         (records.ListenerRow, SCHEMA["$defs"]["listener"]), (records.Verdict, SCHEMA["$defs"]["verdict"]),
         (records.ProcessRow, SCHEMA["$defs"]["process"])]


@pytest.mark.parametrize("td,schema", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_declared_fields_match_schema(td, schema):
    declared = set(td.__annotations__)
    props = set(schema.get("properties", {}))
    assert props <= declared, f"{td.__name__} lacks {sorted(props - declared)}"
    assert set(schema.get("required", [])) <= td.__required_keys__, td.__name__
    if schema.get("additionalProperties") is False:
        assert declared <= props, f"{td.__name__} declares {sorted(declared - props)} unknown to the schema"


def test_rows_built_are_destination_rows():
    from netdiag.analysis import aggregate as agg
    key = agg.DstKey(4026531840, 4, "198.18.0.1", 80)
    rows = agg.build_rows({key: {"connects": 3, "established": 3}}, {}, {key: agg.DIR_OUT}, {key: 3}, {},
                          str, str, lambda ns: None)
    assert set(rows[0]) == records.DestinationRow.__required_keys__
