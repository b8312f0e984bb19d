"""Every import inside a function in clip_jax says why it is not at the top of its module
(docs/ARCHITECTURE.md): a comment on its line or on the line above, or on the first import of the run of
imports it belongs to. An import at the top costs nothing to read; one hidden in a function needs its
reason (start-up time, an optional dependency, a cycle) where the next reader sees it."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "clip_jax"

IMPORTS = (ast.Import, ast.ImportFrom)
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def comment_lines(source: str) -> set[int]:
    """The line numbers that hold a comment (a '#' inside a string is not one)."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {t.start[0] for t in tokens if t.type == tokenize.COMMENT}


def import_runs(tree: ast.AST) -> list[list[ast.stmt]]:
    """Each run of consecutive import statements inside a function (at any depth: in an if, a try, a
    nested function), as the list of its statements."""
    inside = set()
    for fn in (n for n in ast.walk(tree) if isinstance(n, FUNCTIONS)):
        inside.update(id(n) for n in ast.walk(fn) if isinstance(n, IMPORTS))
    runs = []
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            run: list[ast.stmt] = []
            stmts = getattr(node, field, None)
            for stmt in stmts if isinstance(stmts, list) else []:  # a lambda's body is one expression
                if isinstance(stmt, IMPORTS) and id(stmt) in inside:
                    run.append(stmt)
                    continue
                if run:
                    runs.append(run)
                run = []
            if run:
                runs.append(run)
    return runs


def unexplained(source: str, name: str = "<string>") -> list[str]:
    """'file:line: the import' for each function-local import whose run has no comment saying why."""
    comments = comment_lines(source)
    lines = source.splitlines()
    bad = []
    for run in import_runs(ast.parse(source)):
        first = run[0]
        above = first.lineno - 1  # a comment line of its own (not another statement's trailing comment)
        said = comments & set(range(first.lineno, first.end_lineno + 1)) or (
            above in comments and lines[above - 1].lstrip().startswith("#"))
        if not said:
            bad += [f"{name}:{s.lineno}: {lines[s.lineno - 1].strip()}" for s in run]
    return bad


def test_every_function_local_import_says_why():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        bad += unexplained(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))
    assert not bad, "function-local imports without a comment saying why:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, n_bad", [
    ("def f():\n    import json\n", 1),
    ("def f():\n    import json  # why\n", 0),
    ("def f():\n    # why\n    import json\n", 0),
    ("def f():\n    import json  # why\n    import os\n\n    from x import y\n", 0),  # one run
    ("def f():\n    import json  # why\n    x = 1\n    import os\n", 1),  # a second run
    ("def f():\n    s = '# not a comment'\n    import json\n", 1),
    ("def f():\n    x = 1  # about x\n    import json\n", 1),
    ("def f():\n    if x:\n        import json\n", 1),
    ("def f():\n    try:\n        import faiss  # optional\n    except ImportError:\n        pass\n", 0),
    ("def f():\n    def g():\n        import json\n", 1),
    ("import json\n\n\ndef f():\n    pass\n", 0),  # at the top: nothing to say
    ("if TYPE_CHECKING:\n    import json\n", 0),
])
def test_the_rule_itself(source, n_bad):
    assert len(unexplained(source)) == n_bad
