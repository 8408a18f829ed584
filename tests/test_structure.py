"""The shape of the code base: module and function sizes, and the documents it cites.

Every Python module of the project (``bridge/``, and ``codecs/`` and ``dialplans/``, which
``bridge/codecs`` and ``bridge/dialplans`` link to, each read once) stays under
``MAX_MODULE_LINES`` lines and every function under ``MAX_FUNCTION_LINES``; ``bridge/bench``
(measurement scripts) is exempt. Tracked files cite only documents that exist.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
PACKAGES = ("bridge", "codecs", "dialplans")
EXEMPT = (ROOT / "bridge" / "bench",)

# Documents that are not in the repository; spelled in parts so this file does not cite them.
_MD = ".md"
GONE_DOCUMENTS = ("PROTOCOL" + _MD, "DESIGN" + _MD, "PRIOR_ART" + _MD)
_DOCS_PATH = re.compile(r"docs/[A-Za-z0-9_.-]+?\.md\b")


def size_violations(source: str, name: str, *, max_module: int = MAX_MODULE_LINES,
                    max_function: int = MAX_FUNCTION_LINES) -> list[str]:
    """One line per module over ``max_module`` lines and per function over ``max_function``."""
    out = []
    lines = len(source.splitlines())
    if lines > max_module:
        out.append(f"{name}: module of {lines} lines (limit {max_module})")
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > max_function:
                out.append(f"{name}:{node.lineno}: function {node.name} of {length} lines "
                           f"(limit {max_function})")
    return out


def project_modules() -> Iterator[Path]:
    """Each project module once, by its real path (the package links are not followed)."""
    seen: set[Path] = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            real = path.resolve()
            if real in seen or any(real.is_relative_to(e) for e in EXEMPT):
                continue
            seen.add(real)
            yield real


def tracked_text_files() -> Iterator[tuple[str, str]]:
    """(path, text) of every file git tracks that reads as UTF-8 text."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in names:
        path = ROOT / name
        if not name or path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            yield name, data.decode("utf-8")
        except UnicodeDecodeError:
            continue


def test_no_module_or_function_is_over_the_size_limits() -> None:
    modules = list(project_modules())
    names = {p.relative_to(ROOT).as_posix() for p in modules}
    assert {"bridge/call/clock.py", "codecs/resample.py", "dialplans/tools.py"} <= names
    assert not any(n.startswith(("bridge/bench/", "bridge/codecs/", "bridge/dialplans/"))
                   for n in names)
    problems = [v for p in modules
                for v in size_violations(p.read_text("utf-8"), p.relative_to(ROOT).as_posix())]
    assert not problems, "\n" + "\n".join(problems)


def test_the_size_checker_catches_a_long_function_and_a_long_module() -> None:
    body = "".join(f"        x{i} = {i}\n" for i in range(60))
    source = f"def fine():\n    pass\n\n\nclass C:\n    async def long(self):\n{body}"
    # ``long`` spans its def line and 60 body lines: 61 lines, one over the limit.
    assert size_violations(source, "m.py") == [
        "m.py:6: function long of 61 lines (limit 60)"]
    shorter = source.replace("        x59 = 59\n", "")
    assert size_violations(shorter, "m.py") == []
    assert size_violations(shorter, "m.py", max_module=10) == [
        "m.py: module of 65 lines (limit 10)"]


def test_no_tracked_file_cites_a_document_that_is_not_in_the_repository() -> None:
    hits = [f"{name}: {doc}" for name, text in tracked_text_files()
            for doc in GONE_DOCUMENTS if doc in text]
    assert not hits, "\n" + "\n".join(hits)


def test_every_cited_docs_page_exists() -> None:
    missing = sorted({f"{name}: {ref}" for name, text in tracked_text_files()
                      for ref in _DOCS_PATH.findall(text) if not (ROOT / ref).is_file()})
    assert not missing, "\n" + "\n".join(missing)


def test_the_document_checks_see_this_repository() -> None:
    names = {name for name, _ in tracked_text_files()}
    assert {"README.md", "tests/test_structure.py"} <= names
    # Spelled in parts: the pages named here are examples, not citations.
    first, second = "docs/" + "realtime-protocol" + _MD, "docs/" + "a_b" + _MD
    assert _DOCS_PATH.findall(f"see {first} §4 and {second}.") == [first, second]
