"""Bring bench/results/*.json up to the current result schema (``SCHEMA_VERSION`` in
bench/common.py), so that bench/make_table.py reads recorded fields instead of guessing
what an old file meant.

    python bench/upgrade_results.py           # rewrite the files that need it
    python bench/upgrade_results.py --check   # list what would change; write nothing

Files written before results were versioned (no ``schema_version``) left out settings
whose value was implied by the code of their day. Version 1 records each of them:

- matching-accuracy: ``device`` "cpu" (runs before the ``--device`` option ran on the
  CPU); ``config.siamese`` "sample" (before that option every run drew DSA per image);
  ``eval.recipe`` "dc" (before the student recipes, the field's protocol);
  ``iterations_planned`` = the configured iteration count.
- matching-speed: each row's ``device`` "cpu".
- soft-label: ``relabel`` "stored", ``recipe`` "dc", ``options`` {}, ``seed`` 0,
  ``label_teachers`` 1 (the random baseline was relabelled by the first teacher alone),
  ``resumed_from_checkpoint`` / ``reused_set`` false, ``peak_rss_mib_build`` null (only
  the whole process's peak was recorded).
- NCFM matching-accuracy runs from before the ``clamp`` option: ``clamp`` false, and
  ``calib_weight`` divided by the number of classes K (the calibration CE was then a
  mean over all images; today it is a sum over classes of per-class means, K times as
  large at the same weight).
- calibration-set: ``device`` "cpu" when the machine had no GPU; a GPU run without a
  ``note`` gets "GPU shared by the bench/gpu.sh jobs" (make_table used to add it).

A file that cannot be stated in the current schema is reported and left alone (exit
code 1). No measured number is ever changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, SCHEMA_VERSION  # noqa: E402

CORESETS = ("random", "herding", "kcenter")


class CannotUpgrade(Exception):
    pass


def _default(d: dict, key: str, value) -> None:
    d.setdefault(key, value)


def to_v1(doc: dict) -> dict:
    """An unversioned result file as schema version 1 (a new dict)."""
    doc = json.loads(json.dumps(doc))
    kind = doc.get("benchmark")
    gpu = "gpu" in doc.get("machine", {})
    if kind == "matching-accuracy":
        cfg = doc["config"]
        if doc["method"].startswith("ncfm") and "clamp" not in cfg:
            # before the clamp option (commit 28f3cf7): no clamp, and the calibration
            # CE was a mean over all K·ipc images, which is today's per-class sum at 1/K
            # of the weight
            first = doc["curve"][0]["accuracy"]
            classes, rest = divmod(first["n_images"], doc["ipc"])
            if rest:
                raise CannotUpgrade("the number of classes does not follow from the set size")
            cfg["clamp"] = False
            cfg["calib_weight"] = cfg["calib_weight"] / classes
        _default(doc, "device", "cpu")
        if doc["method"] not in CORESETS:
            _default(cfg, "siamese", "sample")
        _default(doc["eval"], "recipe", "dc")
        _default(doc, "iterations_planned", cfg.get("iterations", doc["curve"][-1]["iterations"]))
    elif kind == "matching-speed":
        for row in doc["rows"]:
            _default(row, "device", "cpu")
    elif kind == "soft-label":
        for key, value in (
            ("relabel", "stored"),
            ("recipe", "dc"),
            ("options", {}),
            ("seed", 0),
            ("label_teachers", 1),
            ("resumed_from_checkpoint", False),
            ("reused_set", False),
            ("peak_rss_mib_build", None),
        ):
            _default(doc, key, value)
    elif kind == "calibration-set":
        if "device" not in doc:
            if gpu:
                raise CannotUpgrade("no device recorded on a machine with a GPU")
            doc["device"] = "cpu"
        if doc["device"].startswith("cuda") and "note" not in doc:
            # the one such file came from bench/gpu.sh, which runs its jobs side by side
            doc["note"] = "GPU shared by the bench/gpu.sh jobs"
    # other kinds (coreset, full-data, teacher, ptq-calibration, generation-cost, ...)
    # recorded everything make_table reads: the version alone
    # the version first, then the fields in their recorded order
    return {"schema_version": 1, **{k: v for k, v in doc.items() if k != "schema_version"}}


UPGRADES = {None: to_v1}  # from version -> function to the next version


def upgrade(doc: dict) -> dict:
    while doc.get("schema_version") != SCHEMA_VERSION:
        step = UPGRADES.get(doc.get("schema_version"))
        if step is None:
            raise CannotUpgrade(f"no upgrade from schema version {doc.get('schema_version')}")
        doc = step(doc)
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="list the files; write nothing")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    failed = 0
    for path in sorted(args.results.glob("*.json")):
        doc = json.loads(path.read_text())
        if doc.get("schema_version") == SCHEMA_VERSION:
            continue
        try:
            new = upgrade(doc)
        except CannotUpgrade as e:
            print(f"cannot upgrade {path.name}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{'would upgrade' if args.check else 'upgraded'} {path.name}")
        if not args.check:
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(new, indent=2) + "\n")
            os.replace(tmp, path)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
