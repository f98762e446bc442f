"""The whole results.json schema: the parts every study shares (minigpt.results_schema) plus
each registered objective's fragment. `python -m minigpt.study.schema > docs/results-schema.md`
regenerates the documentation page (tests/test_docs.py checks it is current)."""

from __future__ import annotations

import copy
from typing import Any

from ..results_schema import BASE_SCHEMA, schema_markdown
from .registry import get_objective, objective_names


def build_schema() -> dict[str, Any]:
    schema = copy.deepcopy(BASE_SCHEMA)
    props = schema["properties"]
    run = props["runs"]["items"]["properties"]
    agg = props["aggregates"]["items"]["properties"]
    study = props["study"]["properties"]
    from .variants import AGGREGATE_SCHEMA, RUN_SCHEMA, STUDY_SCHEMA

    run.update(RUN_SCHEMA)
    agg.update(AGGREGATE_SCHEMA)
    study.update(STUDY_SCHEMA)
    for name in objective_names():
        obj = get_objective(name)
        for target, fragment in ((run, obj.run_schema()), (agg, obj.aggregate_schema()),
                                 (study, obj.study_schema())):
            for key, sub in fragment.items():
                target.setdefault(key, sub)
    return schema


RESULTS_SCHEMA = build_schema()


if __name__ == "__main__":
    print(schema_markdown(RESULTS_SCHEMA), end="")
