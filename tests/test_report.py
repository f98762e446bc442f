"""The study's summary and report text (what a reader of report.md sees). The study's
own tests are in test_study*.py."""

from __future__ import annotations





def test_one_encoding_summary_compares_nothing_with_itself():
    from minigpt.study import get_objective
    from minigpt.study.paragraph import summarize

    agg = {"pos": "learned", "extrapolates": False, "train_time_s": {"mean": 207.0},
           "step_time_ms": {"mean": 31.0, "std": 0.0, "n": 1}, "pos_params": {"mean": 8192.0},
           "length_ppl": [{"length": 64, "ppl": {"mean": 5.5, "std": None, "n": 1}}]}
    results = {"study": {"block_size": 64, "lengths": [64], "seeds": [1337],
                         "unigram_ppl": 30.0, "eval_span_tokens": 1024},
               "environment": {"jobs": 1}, "aggregates": [agg]}
    text = summarize(results, get_objective("lm"))["text"]
    assert "A steady-state training step took 31.0 ms (median)." in text
    assert "31.0-31.0" not in text and "faster" not in text and "best" not in text
    assert "At the trained length L = 64, validation perplexity: learned 5.50." in text
    from minigpt.text import plural

    assert (plural(1, "encoding"), plural(2, "encoding"), plural(1, "run")) == \
        ("1 encoding", "2 encodings", "1 run")
