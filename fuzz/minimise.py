#!/usr/bin/env python3
"""Folds what fuzz/run.sh found into the committed corpus, keeping it small.

    fuzz/minimise.py TARGET MAX_NEW

The seeds (corpus/TARGET/seed-*) always stay. Of the other inputs in corpus/TARGET and
work/TARGET, at most MAX_NEW are kept: chosen one by one for the most coverage features
(edges; hit counts are left out) not yet covered (greedy set cover), smallest first on a
tie, until MAX_NEW or nothing adds one. libFuzzer measures them (`-merge=1
-set_cover_merge=1 -use_counters=0` with a control file); its own merge keeps every
input that adds any, which is a thousand or more for the JSON and TOML decoders. Needs the targets built (`cargo fuzz build`).
"""
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
BIN = FUZZ / "target/x86_64-unknown-linux-gnu/release"


def features(target, dirs):
    """(path, features) of every input in dirs, as libFuzzer's merge measures them."""
    with tempfile.TemporaryDirectory() as tmp:
        control = Path(tmp) / "control"
        empty = Path(tmp) / "empty"
        empty.mkdir()
        subprocess.run(
            [str(BIN / target), "-merge=1", "-set_cover_merge=1", "-use_counters=0",
             f"-merge_control_file={control}", str(empty)] + [str(d) for d in dirs],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lines = control.read_text().splitlines()
    n = int(lines[0])
    paths = lines[2:2 + n]
    edges = {}
    for line in lines[2 + n:]:
        if line.startswith("FT "):
            fields = line.split()
            edges[int(fields[1])] = set(map(int, fields[2:]))
    return [(Path(paths[i]), edges.get(i, set())) for i in range(n)]


def main():
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} TARGET MAX_NEW")
    target, max_new = sys.argv[1], int(sys.argv[2])
    corpus = FUZZ / "corpus" / target
    work = FUZZ / "work" / target
    inputs = features(target, [d for d in (corpus, work) if d.is_dir()])
    covered = set()
    for path, e in inputs:
        if path.name.startswith("seed-"):
            covered |= e
    seeds_cover = len(covered)
    candidates = [(p, e) for p, e in inputs if not p.name.startswith("seed-")]
    chosen = {}
    while len(chosen) < max_new:
        best = max(candidates, default=None,
                   key=lambda c: (len(c[1] - covered), -c[0].stat().st_size))
        if best is None or not best[1] - covered:
            break
        covered |= best[1]
        data = best[0].read_bytes()
        chosen[hashlib.sha1(data).hexdigest()] = data
        candidates.remove(best)
    for old in corpus.iterdir():
        if not old.name.startswith("seed-"):
            old.unlink()
    for name, data in chosen.items():
        (corpus / name).write_bytes(data)
    left = len(set().union(*(e for _, e in inputs)) - covered) if inputs else 0
    print(f"{target}: seeds cover {seeds_cover} features; {len(chosen)} inputs added, "
          f"{len(covered)} covered, {left} of the inputs' features left out")


if __name__ == "__main__":
    main()
