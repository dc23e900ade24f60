"""Golden outputs: everything the commands print about one indexed folder, in one structure.

Recorded before a change that must not change behaviour and compared after it: the
``--json`` output of every command that prints results, and the database's contents.
What differs between two runs of the same code is masked (times, the root folder, file
modification times, database paths); floating-point numbers are compared to a tolerance,
since another CPU may round the model's last digits differently.

Used by tests/test_golden.py (the test photos, in CI) and scripts/golden.py (a dev set).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
from click.testing import CliRunner

ROOT_MARK = "<root>"
TOLERANCE = 1e-4
# Columns and meta keys whose values differ between two runs of the same code.
MASKED_COLUMNS = {"mtime_ns", "indexed_at", "size"}
MASKED_META = {"created", "root", "db_id"}


def _run(args: list[str], cwd: Path) -> object:
    from imgsearch.cli import main

    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, args)
    finally:
        os.chdir(old)
    if result.exit_code != 0:
        raise AssertionError(f"imgsearch {' '.join(args)} failed: {result.output}")
    return json.loads(result.stdout)


def _masked(value: object, root: str) -> object:
    """Absolute paths made relative to a marker; the index summary's time dropped; a date
    read from a file's mtime masked."""
    if isinstance(value, str):
        return value.replace(root, ROOT_MARK)
    if isinstance(value, list):
        return [_masked(v, root) for v in value]
    if isinstance(value, dict):
        out = {k: _masked(v, root) for k, v in value.items() if k != "seconds"}
        if out.get("taken_from") == "mtime":
            out["taken"] = "<mtime>"  # the photos' file times: when the test wrote them
        return out
    return value


def dump_database(db: Path) -> dict[str, list]:
    """Every table's rows in key order; vectors as float lists; run-specific values masked."""
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out: dict[str, list] = {}
        for table in sorted(tables):
            cursor = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2")  # noqa: S608
            names = [c[0] for c in cursor.description]
            rows = []
            for row in cursor:
                record = {}
                for name, value in zip(names, row):
                    if name in MASKED_COLUMNS:
                        continue
                    if isinstance(value, bytes) and name == "hashes":
                        value = value.hex()  # perceptual hashes: bits, not a vector
                    elif isinstance(value, bytes):
                        vector = np.frombuffer(value, dtype=np.float32)
                        # The bank's thousands of vectors: a few values and the norm each.
                        shown = vector[:8] if table == "captions" else vector
                        value = [round(float(x), 6) for x in shown]
                        value.append(round(float(np.linalg.norm(vector)), 6))
                    record[name] = value
                if table == "meta" and record["key"] in MASKED_META:
                    record["value"] = "<masked>"
                rows.append(record)
            out[table] = rows
        schema = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        out["<schema>"] = [list(r) for r in schema]
        return out
    finally:
        conn.close()


def record(
    root: Path,
    queries: list[Path],
    pair: tuple[Path, Path],
    texts: list[str],
    item: str | None = None,
    extra: Callable[[Path], dict] | None = None,
) -> dict:
    """Index ``root`` (offline model, packaged bank) and collect every command's output.

    ``queries`` are image files (inside or outside the folder) ranked by every method;
    ``pair`` is compared; ``texts`` are text queries; ``item`` a sub-folder for ``sets``.
    ``root`` needs a labels.csv for ``evaluate``.
    """
    root = root.resolve()
    where = str(root)
    db = root / ".imgsearch" / "index.db"
    out: dict[str, object] = {}
    out["index"] = _run(["index", where, "--model", "offline", "--json", "-q"], root)
    out["reindex"] = _run(["index", where, "--json", "-q"], root)
    status = _run(["status", "--json"], root)
    assert isinstance(status, dict)
    status.pop("size_bytes")
    out["status"] = status
    n = int(status["images"])
    for query in queries:
        name = query.name
        for method in ("caption", "caption_avg", "image", "hybrid"):
            args = ["query", str(query), "--method", method, "-k", str(n), "--json"]
            out[f"query {name} {method}"] = _run(args, root)
        args = ["query", str(query), "-k", "5", "--explain", "--json"]
        out[f"query {name} explain"] = _run(args, root)
        out[f"captions {name}"] = _run(["captions", str(query), "--json"], root)
    for text in texts:
        args = ["query", "--text", text, "-k", str(n), "--explain", "--json"]
        out[f"text {text}"] = _run(args, root)
    out["compare"] = _run(["compare", str(pair[0]), str(pair[1]), "--json"], root)
    out["graph"] = _run(["graph", "--json"], root)
    out["graph caption"] = _run(["graph", "--method", "caption", "--k", "0", "--json"], root)
    out["clusters"] = _run(["clusters", "--json"], root)
    out["clusters k3"] = _run(["clusters", "--k", "3", "--method", "hybrid", "--json"], root)
    out["clusters tau"] = _run(["clusters", "--tau", "0.2", "--json"], root)
    out["duplicates"] = _run(["duplicates", "--json"], root)
    if item is not None:
        for method in ("hungarian", "greedy", "mean"):
            args = ["sets", where, "--query", str(root / item), "--method", method, "--json", "-q"]
            out[f"sets {method}"] = _run(args, root)
    out["evaluate"] = _run(["evaluate", where, "--json", "-q"], root)
    if extra is not None:
        out.update(extra(root))
    out = {k: _masked(v, where) for k, v in out.items()}
    out["database"] = dump_database(db)
    return out


def differences(
    expected: object, actual: object, where: str = "", tol: float = TOLERANCE
) -> list[str]:
    """Where ``actual`` departs from ``expected`` (numbers within ``tol`` count as equal)."""
    if isinstance(expected, float) or isinstance(actual, float):
        if not isinstance(expected, (int, float)) or not isinstance(actual, (int, float)):
            return [f"{where}: {expected!r} != {actual!r}"]
        if math.isnan(expected) and math.isnan(actual):
            return []
        return [] if abs(expected - actual) <= tol else [f"{where}: {expected!r} != {actual!r}"]
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in sorted(set(expected) | set(actual), key=str):
            if key not in expected or key not in actual:
                found.append(f"{where}/{key}: only in {'actual' if key in actual else 'expected'}")
            else:
                found += differences(expected[key], actual[key], f"{where}/{key}", tol)
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} items != {len(actual)}"]
        found = []
        for i, (e, a) in enumerate(zip(expected, actual)):
            found += differences(e, a, f"{where}[{i}]", tol)
        return found
    return [] if expected == actual else [f"{where}: {expected!r} != {actual!r}"]


def save(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def load(path: Path) -> dict:
    return json.loads(path.read_text())
