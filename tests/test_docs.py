"""The README and docs/: every command shown parses with the real argument parser, every
Python block compiles, every link to a page resolves, and the results.json page is the one
generated from RESULTS_SCHEMA."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from minigpt.cli import build_parser
from minigpt.results_schema import schema_markdown
from minigpt.study.schema import build_schema

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(page: Path, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(page.read_text(encoding="utf-8"))
            if kind == lang]


def commands(page: Path) -> list[list[str]]:
    """The `minigpt` argument lists of the shell blocks of a page (torchrun launches
    included); lines with a `...` placeholder are left out."""
    out = []
    for body in blocks(page, "bash"):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]  # OMP_NUM_THREADS=1 torchrun ...
            if not words or "..." in words:
                continue
            if words[0] == "minigpt":
                out.append(words[1:])
            elif words[0] == "torchrun":
                at = next(i for i, w in enumerate(words)
                          if w == "minigpt" and words[i - 1] == "-m" or w == "$(which minigpt)")
                out.append(words[at + 1:])
    return out


ALL = [(p.relative_to(ROOT).as_posix(), c) for p in PAGES for c in commands(p)]


def test_the_docs_show_commands_of_every_sub_command():
    shown = {c[0] for _, c in ALL}
    assert {"train", "sample", "compare", "viz", "bench", "export", "import"} <= shown
    assert len(ALL) >= 30


@pytest.mark.parametrize("page,argv", ALL, ids=[f"{p}:{' '.join(c)[:60]}" for p, c in ALL])
def test_every_command_shown_parses(page, argv, capsys):
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{page}: `minigpt {shlex.join(argv)}` does not parse: "
                    f"{capsys.readouterr().err.strip()}")
    assert args.handler is not None


def test_the_readme_starts_with_the_two_commands_and_links_to_real_pages():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = blocks(ROOT / "README.md", "bash")[0].splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]
    assert 8_000 <= len(text.encode()) <= 14_700  # an index, not a wall
    for page in PAGES:
        for link in re.findall(r"\]\(((?:\.\./|docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)",
                               page.read_text(encoding="utf-8")):
            assert (page.parent / link).resolve().exists(), f"{page.name} links to {link}"


def test_the_readme_links_to_the_docs_instead_of_copying_them():
    """A block of the README found again in a page of docs/ goes stale in one of them: the
    README says it in a line and links (a few lines of a log may be quoted)."""
    def lines_of(page: Path) -> list[str]:
        return [line for line in page.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("```")]

    readme = lines_of(ROOT / "README.md")
    run = 6  # consecutive lines, blank lines and fences left out
    shingles = {tuple(readme[i:i + run]) for i in range(len(readme) - run + 1)}
    for page in PAGES[1:]:
        lines = lines_of(page)
        copied = [s for s in (tuple(lines[i:i + run]) for i in range(len(lines) - run + 1))
                  if s in shingles]
        assert not copied, f"{page.name} repeats the README: {copied[0][0]!r}..."


def test_every_test_a_page_names_exists():
    """`tests/test_x.py` and `tests/test_x.py::test_name` in the docs point at real tests."""
    named = [(page.name, f, name) for page in PAGES for f, name in
             re.findall(r"tests/(test_\w+\.py)(?:::(\w+))?", page.read_text(encoding="utf-8"))]
    assert len(named) >= 5
    for page, f, name in named:
        path = ROOT / "tests" / f
        assert path.exists(), f"{page} names {f}"
        if name:
            assert re.search(rf"^def {name}\(", path.read_text(encoding="utf-8"), re.M), \
                f"{page} names {f}::{name}"


def test_python_blocks_compile():
    for page in PAGES:
        for body in blocks(page, "python"):
            compile(body, str(page), "exec")


def test_results_schema_page_is_generated_from_the_schema():
    page = (ROOT / "docs" / "results-schema.md").read_text(encoding="utf-8")
    assert page == schema_markdown(build_schema()), \
        "docs/results-schema.md is stale: python -m minigpt.study.schema > docs/results-schema.md"
    for field in ("runs[].training.final_val_loss", "aggregates[].length_ppl[].ppl.mean",
                  "study.verification.shared_init_identical", "runs[].training.checks",
                  "runs[].length_generalization.results[].window_ppl",
                  "aggregates[].steps_to_criterion", "study.length_kinds"):
        assert f"`{field}`" in page


def test_the_bad_input_counts_come_from_the_table():
    """docs/bad-inputs.md numbers its rows 1..N, and every page that counts them says N."""
    table = (ROOT / "docs" / "bad-inputs.md").read_text(encoding="utf-8")
    numbers = [int(n) for n in re.findall(r"^\| (\d+) \| `", table, re.M)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 100
    counted = {page.name: int(n) for page in PAGES
               for n in re.findall(r"(\d+) bad inputs", page.read_text(encoding="utf-8"))}
    assert counted and counted == {name: len(numbers) for name in counted}, counted


TIMING = re.compile(r"\d+(?:[.,]\d+)? ?(?:min\b|s\b|ms\b|seconds\b|minutes\b|hours?\b)"
                    r"|\d[\d,]* tokens/s")


def test_every_time_and_speed_in_the_readme_names_its_machine():
    """A time or speed in the README's prose is read against the reader's machine: the
    paragraph it stands in (or the one introducing its log block) names the CPU and its bf16
    support, the threads and the dtype (issue 23, point 4)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraphs, prose = [], ""
    for part in re.split(r"\n\s*\n", FENCE.sub(lambda m: "\x00" + m.group(2), text)):
        if part.startswith("\x00"):  # a code block: read with the paragraph before it
            paragraphs.append(prose + "\n" + part)
        else:
            prose = part
            paragraphs.append(part)
    bare = []
    for para in paragraphs:
        if not TIMING.search(para):
            continue
        named = ("AVX" in para and "thread" in para
                 and re.search(r"bf16|bfloat16|float32", para) is not None)
        if not named:
            bare.append(TIMING.search(para).group(0) + ": " + para[:80])
    assert not bare, bare
