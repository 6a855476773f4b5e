"""Compare two study folders, e.g. the demo before and after a refactor: every study.sqlite table (timing, path and
timestamp columns and the timing keys of JSON details left out) and every analysis/ and prediction/ CSV as a
table. Prints IDENTICAL or the differences; exits 1 on a difference.

    python tools/compare_studies.py BEFORE_FOLDER AFTER_FOLDER

Tables or columns that only one side has are differences too: say in the note which ones a change added on purpose.
"""

import json
import sqlite3
import sys
from pathlib import Path

import pandas as pd

DROP_COLUMNS = {"created", "finished", "seconds", "run_dir", "path"}
TIMING = ("seconds", "elapsed", "time", "timing", "wall", "started", "finished", "created")


def clean(value):
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items() if not any(t in k.lower() for t in TIMING)}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def cell(value):
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.dumps(clean(json.loads(value)), sort_keys=True)
        except json.JSONDecodeError:
            return value
    return value


def tables(db: Path) -> dict:
    con = sqlite3.connect(db)
    out = {}
    for (name,) in con.execute("select name from sqlite_master where type='table'"):
        cur = con.execute(f"select * from {name}")
        cols = [d[0] for d in cur.description]
        keep = [i for i, c in enumerate(cols) if c not in DROP_COLUMNS]
        rows = sorted(tuple(repr(cell(r[i])) for i in keep) for r in cur.fetchall())
        out[name] = ([cols[i] for i in keep], rows)
    return out


def main(a: Path, b: Path) -> int:
    problems = []
    ta, tb = tables(a / "study.sqlite"), tables(b / "study.sqlite")
    for name in sorted(set(ta) | set(tb)):
        if name not in ta or name not in tb:
            problems.append(f"table {name} only in {'b' if name not in ta else 'a'}")
            continue
        if ta[name][0] != tb[name][0]:
            problems.append(f"table {name}: columns {ta[name][0]} vs {tb[name][0]}")
        ra, rb = ta[name][1], tb[name][1]
        if ra != rb:
            diff = set(ra) ^ set(rb)
            problems.append(f"table {name}: {len(ra)} vs {len(rb)} rows, {len(diff)} differ; e.g. {sorted(diff)[:2]}")
        else:
            print(f"table {name}: {len(ra)} rows identical")
    for sub in ("analysis", "prediction"):
        fa = {p.name for p in (a / sub).glob("*.csv")}
        fb = {p.name for p in (b / sub).glob("*.csv")}
        for name in sorted(fa ^ fb):
            problems.append(f"{sub}/{name} only in {'a' if name in fa else 'b'}")
        for name in sorted(fa & fb):
            da, db_ = pd.read_csv(a / sub / name), pd.read_csv(b / sub / name)
            if not da.equals(db_):
                problems.append(f"{sub}/{name} differs ({da.shape} vs {db_.shape})")
            else:
                print(f"{sub}/{name}: identical {da.shape}")
    print("\n".join(problems) if problems else "IDENTICAL")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
