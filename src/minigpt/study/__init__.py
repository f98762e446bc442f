"""The positional-encoding study (`minigpt compare`): one model per (encoding, seed), trained
identically, scored by an objective (language modelling or an algorithmic task), and reported
with the study's noise rules.

    settings.py     StudySettings (typed; compare's flags come from it) and Study
    objective.py    the objective interface and registry; lm.py and task.py implement it
    runs.py         training and evaluating runs, one at a time or several at once (--jobs);
                    state.py where a run stands; diffs.py settings that differ, named
    variants.py     rope context-extension variants (--extend) and adopted rope checkpoints;
                    variant_runs.py runs them, extension.py reads them in the report
    records.py      one run's record, the environment, the per-encoding aggregates
    fairness.py     what was held equal, checked
    stats.py        hierarchical bootstrap over seeds and items, Holm's correction
    summary.py      ranking and wording, only after the family is corrected; paragraph.py
                    the summary paragraph
    figures.py      the shared plots; render.py the Markdown and HTML report
    schema.py       results.json's schema, the objectives' fragments included
    orchestrate.py  a whole study in one directory, resumable
"""

import importlib

_WHERE = {"Objective": "objective", "get_objective": "registry", "objective_names": "registry",
          "register": "registry", "StudyOutcome": "orchestrate", "check_out": "orchestrate",
          "collect_results": "orchestrate", "run_study": "orchestrate",
          "write_study_file": "orchestrate", "DEFAULT_ENCODINGS": "settings", "Study": "settings",
          "StudySettings": "settings", "config_diff": "diffs", "diff_settings": "diffs",
          "make_study": "settings", "parse_encodings": "settings", "parse_lengths": "parsing",
          "run_name": "settings"}
__all__ = list(_WHERE)


def __getattr__(name: str):  # lazy: building the command line must not import torch
    if name not in _WHERE:
        raise AttributeError(name)
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
