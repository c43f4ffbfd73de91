"""Every example of README.md, docs/*.md and benchmarks/README.md, run and
compared with the output the page shows.

What counts as an example, in a page's fenced code blocks:
- a ```console block: each line starting with `$ ` is a command, run by bash;
  the lines after it, up to the next `$ ` or the block's end, are what it
  prints (stdout, then stderr).
- a ```python block: run as a script; the ```text block right after it (blank
  lines between allowed) is what it prints, or nothing without one.
- ```sh and ```bash blocks are instructions (installs, builds, benchmarks),
  not examples: they must not hold a `biasfit` command, except the quick
  start's (.ci/run runs those).

The comment line right before a block can say more:
- `<!-- example: skip REASON -->`: not run here; SKIPPED below names each.
- `<!-- example: file PATH -->`: the block is the repository's file PATH,
  word for word (checked), and runs as `python PATH`.

A page's examples run in order, in one fresh folder holding a copy of
examples/ (so that `examples/doses.csv` resolves, later commands see the files
earlier ones wrote, and biasfit is never imported from the checkout, which
biasfit/_native.py refuses). Output is compared exactly, after two
normalizations: trailing spaces are dropped, and torchrun's own log lines
(its OMP_NUM_THREADS notice and the like) are removed. A line `...` in the
expected output stands for any number of lines.

Set BIASFIT_DOCS_ACCEPT=1 to write the output each example printed into its
page instead (examples with `...` are left alone): for a page's new example,
never to make a failing one pass unread.
"""
import gzip
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import tolerances

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "benchmarks" / "README.md",
                *(ROOT / "docs").glob("*.md")])
# Every example that does not run here, by page and reason: a new one must be
# added here on purpose.
SKIPPED = {
    ("docs/cuda.md", "needs a CUDA GPU"),
    ("docs/distributed.md", "needs two machines"),
}
ACCEPT = os.environ.get("BIASFIT_DOCS_ACCEPT") == "1"
TIMEOUT_S = 300
MARKER = re.compile(r"<!-- example: (skip|file) (.+?) -->")
TORCHRUN_LOG = re.compile(r"^(W|I)\d{4} |^\*{20,}$|^Setting OMP_NUM_THREADS|"
                          r"^WARNING:torch\.distributed")


@dataclass
class Example:
    page: str
    line: int            # 1-based line of the command or the code's first line
    kind: str            # "console" or "python"
    code: str
    expected: list       # lines
    span: tuple          # (start, end) 0-based line range of the expected output
    skip: str = None
    file: str = None
    has_output_block: bool = True
    notes: list = field(default_factory=list)

    def __str__(self):
        return f"{self.page}:{self.line}"


def blocks(lines):
    """(language, first content line index, end index, marker) per fenced block."""
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start = i + 1
        end = start
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        marker = MARKER.fullmatch(lines[i - 1].strip()) if i > 0 else None
        yield m[1], start, end, marker
        i = end + 1


def parse(page):
    rel = page.relative_to(ROOT).as_posix()
    lines = page.read_text().splitlines()
    found, stray = [], []
    listed = list(blocks(lines))
    for k, (lang, start, end, marker) in enumerate(listed):
        skip = marker[2] if marker and marker[1] == "skip" else None
        file = marker[2] if marker and marker[1] == "file" else None
        if lang == "console":
            i = start
            while i < end:
                if not lines[i].startswith("$ "):
                    raise AssertionError(f"{rel}:{i + 1}: console output before any `$ ` command")
                j = i + 1
                while j < end and not lines[j].startswith("$ "):
                    j += 1
                found.append(Example(rel, i + 1, "console", lines[i][2:], lines[i + 1:j],
                                     (i + 1, j), skip=skip))
                i = j
        elif lang == "python":
            following = listed[k + 1] if k + 1 < len(listed) else None
            between = lines[end + 1:following[1] - 1] if following else []
            if following and following[0] == "text" and not any(s.strip() for s in between):
                span, has = (following[1], following[2]), True
            else:
                span, has = (end, end), False
            found.append(Example(rel, start + 1, "python", "\n".join(lines[start:end]) + "\n",
                                 lines[span[0]:span[1]], span, skip=skip, file=file,
                                 has_output_block=has))
        elif lang in ("sh", "bash"):
            quickstart = start >= 2 and lines[start - 2].startswith("<!-- quickstart:")
            if not quickstart:
                stray += [f"{rel}:{n + 1}" for n in range(start, end)
                          if re.match(r"^\s*biasfit\s", lines[n])]
    return found, stray


ALL = {page.relative_to(ROOT).as_posix(): parse(page) for page in PAGES}


def normalize(text):
    out = [line.rstrip() for line in text.splitlines()]
    return [line for line in out if not TORCHRUN_LOG.search(line)]


def matches(got, expected):
    """got equals expected, where one line `...` in expected stands for any lines."""
    if "..." not in expected:
        return got == expected
    k = expected.index("...")
    head, tail = expected[:k], expected[k + 1:]
    assert "..." not in tail, "one `...` an example"
    return (len(got) >= len(head) + len(tail) and got[:len(head)] == head
            and got[len(got) - len(tail):] == tail)


def run(example, cwd, env):
    if example.kind == "console":
        argv = ["bash", "-c", example.code]
    else:
        script = example.file or "example.py"
        if not example.file:
            (cwd / script).write_text(example.code)
        argv = [sys.executable, script]
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    return normalize(proc.stdout) + normalize(proc.stderr)


def example_env():
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    env["COLUMNS"] = "100"
    return env


@pytest.mark.parametrize("page", sorted(ALL))
def test_page_examples_print_what_the_page_shows(page, tmp_path):
    examples, _ = ALL[page]
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = example_env()
    failures, accepted = [], {}
    for ex in examples:
        if ex.skip:
            continue
        if ex.file:
            assert ex.code == (ROOT / ex.file).read_text(), (
                f"{ex}: the block differs from {ex.file}")
        got = run(ex, tmp_path, env)
        if matches(got, ex.expected):
            continue
        if ACCEPT and "..." not in ex.expected and (ex.has_output_block or not got):
            accepted[ex.span] = got
            continue
        failures.append(f"{ex} `{ex.code.splitlines()[0]}`\n--- page shows:\n"
                        + "\n".join(ex.expected) + "\n--- it printed:\n" + "\n".join(got))
    if accepted:
        lines = (ROOT / page).read_text().splitlines()
        for (start, end), got in sorted(accepted.items(), reverse=True):
            lines[start:end] = got
        (ROOT / page).write_text("\n".join(lines) + "\n")
    assert not failures, "\n\n".join(failures)


def test_the_skipped_examples_are_few_and_named():
    skipped = {(page, ex.skip) for page, (examples, _) in ALL.items()
               for ex in examples if ex.skip}
    assert skipped == SKIPPED
    ran = sum(not ex.skip for examples, _ in ALL.values() for ex in examples)
    assert ran >= 20, ran  # a parser that finds nothing must not pass


def test_every_biasfit_command_is_a_runnable_example():
    stray = [where for _, found in ALL.values() for where in found]
    assert not stray, f"biasfit commands outside ```console examples: {stray}"


def test_every_example_data_file_is_in_examples_and_made_by_its_script(tmp_path):
    # make_examples.py writes the same bytes as the committed files.
    script = tmp_path / "make_examples.py"
    shutil.copy(ROOT / "examples" / "make_examples.py", script)
    subprocess.run([sys.executable, str(script)], check=True, cwd=tmp_path)
    made = {p.name for p in tmp_path.glob("*.csv*")}
    committed = {p.name for p in (ROOT / "examples").glob("*.csv*")}
    assert made == committed
    for name in made:
        got, want = (tmp_path / name).read_bytes(), (ROOT / "examples" / name).read_bytes()
        if name.endswith(".gz"):  # the text: another zlib may compress it otherwise
            got, want = gzip.decompress(got), gzip.decompress(want)
        assert got == want, name
    used = set()
    for page in PAGES:
        used |= set(re.findall(r"examples/([\w.]+\.(?:csv\.gz|csv|npy|npz))",
                               page.read_text()))
    assert used and used <= committed, used - committed


def test_the_tolerance_table_in_the_docs_is_the_tests_own():
    text = (ROOT / "docs" / "numerics.md").read_text()
    table = text.split("<!-- tolerances:start -->")[1].split("<!-- tolerances:end -->")[0]
    rows = {}
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = {"float64": eval(cells[2]), "float32": eval(cells[3])}
    assert rows == {name: dict(bound) for name, bound in tolerances.TABLE.items()}


def anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_pages_resolves():
    broken = []
    for page in PAGES:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"\w+://", target):
                continue
            path, _, frag = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif frag and dest.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", dest.read_text(), flags=re.M)
                if frag not in {anchor(h) for h in headings}:
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_the_file_map_names_every_source_file():
    # docs/architecture.md's map is how a newcomer finds a file: a new or
    # renamed file under csrc/ must appear there.
    text = (ROOT / "docs" / "architecture.md").read_text()
    unnamed = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "csrc").rglob("*"))
               if p.is_file() and p.name not in text]
    assert not unnamed, f"not in docs/architecture.md's file map: {unnamed}"
