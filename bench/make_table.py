"""Regenerate the results tables from bench/results/*.json (never typed by hand).

python bench/make_table.py          # docs/results.md (every table) + README.md's headline blocks
python bench/make_table.py --print  # prints them instead

Reads only result files at the current schema version (``SCHEMA_VERSION`` in
bench/common.py) and refuses the rest, naming them: bench/upgrade_results.py converts
older files, so that no table has to guess what an old file meant.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, SCHEMA_VERSION  # noqa: E402

from distill_data.api import method_defaults  # noqa: E402
from distill_data.evaluation import EvalConfig  # noqa: E402
from distill_data.quant.ptq import parse_bits  # noqa: E402
from distill_data.train.recipe import RECIPES  # noqa: E402

ROOT = Path(__file__).resolve().parent
README = ROOT.parent / "README.md"
RESULTS_MD = ROOT.parent / "docs" / "results.md"


CORESETS = ("random", "herding", "kcenter")
#: row order of the matching tables; unknown methods go last
METHOD_ORDER = [*CORESETS, "dm", "datadam", "ncfm", "dm+fyi", "datadam+fyi"]
#: generator settings that do not change what a build produces
NOT_SETTINGS = {"iterations", "checkpoint_every", "real_chunk", "cache_dir"}

# the bit widths the calibration targets name
TARGET_BITS = ("w8a8", "w6a6", "w4a8", "w4a4")


def load_results(folder: Path = RESULTS) -> list[dict]:
    """Every result file in ``folder``, each with its file stem as ``_stem``; exits with
    a message naming the files that are not at the current schema version."""
    results, stale = [], []
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            stale.append(f"{path.name} (schema_version {version if version else 'missing'})")
            continue
        results.append({**doc, "_stem": path.stem})
    if stale:
        raise SystemExit(
            f"make_table reads result files at schema version {SCHEMA_VERSION}; these are "
            "not:\n  " + "\n  ".join(stale) + "\nconvert them with "
            "`python bench/upgrade_results.py`, or run their benchmark again"
        )
    return results


def _rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def _pm(a: dict) -> str:
    return f"{a['mean']:.2f} ± {a['std']:.2f}"


def _acc(r: dict) -> str:
    return _pm(r["accuracy"])


def _duration(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 100 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def coreset_table(results: list[dict]) -> list[str]:
    rows = [r for r in results if r.get("benchmark") == "coreset"]
    if not rows:
        return []
    ipcs = sorted({r["ipc"] for r in rows})
    by = defaultdict(dict)
    for r in rows:
        by[r["method"]][r["ipc"]] = r
    epochs = {ipc: next(r["eval"]["epochs"] for r in rows if r["ipc"] == ipc) for ipc in ipcs}
    runs = sorted({r["eval"]["runs"] for r in rows})
    out = [
        f"**Coreset baselines on `mnist5k`** (4000 train / 1000 test; ConvNet-128×3 instance "
        f"norm; test accuracy %, mean ± std over {'/'.join(map(str, runs))} freshly trained "
        "ConvNets at the final epoch; epochs per IPC: "
        + ", ".join(f"IPC {i}: {epochs[i]}" for i in ipcs)
        + "; build time and peak RSS of the `build` process)",
        "",
        "| method | "
        + " | ".join(f"IPC {i}" for i in ipcs)
        + " | build s (IPC "
        + "/".join(map(str, ipcs))
        + ") | peak RSS MiB |",
        "|---" * (len(ipcs) + 3) + "|",
    ]
    for method in sorted(by):
        cells = [(_acc(by[method][i]) if i in by[method] else "—") for i in ipcs]
        secs = "/".join(
            f"{by[method][i]['build']['seconds']:.1f}" if i in by[method] else "—" for i in ipcs
        )
        rss = max(r["build"]["peak_rss_mib"] for r in by[method].values())
        out.append(f"| {method} | " + " | ".join(cells) + f" | {secs} | {rss:.0f} |")
    full = [r for r in results if r.get("benchmark") == "full-data"]
    for r in full:
        out.append(
            f"| full data ({r['accuracy']['n_images']} images, {r['eval']['epochs']} epochs) | "
            + " | ".join([_acc(r)] * len(ipcs))
            + " | — | — |"
        )
    dates = sorted(r["date"][:10] for r in rows + full)
    m = rows[0]["machine"]
    out += [
        "",
        f"Measured {dates[0]}..{dates[-1]} on {m['nproc']} × {m['cpu_model']}, torch "
        f"{m['torch']}, by `bench/coreset.py`.",
    ]
    return out


def matching_speed_table(results: list[dict]) -> list[str]:
    runs = sorted(
        (r for r in results if r.get("benchmark") == "matching-speed"), key=lambda r: r["date"]
    )
    if not runs:
        return []
    latest: dict[tuple[str, str, str, str], tuple[dict, dict]] = {}
    for r in runs:  # a newer run of the same method, precision, allocator, device wins
        for row in r["rows"]:
            key = (row["method"], row["device"], row["precision"], row["allocator"])
            latest[key] = (row, r)
    out = [
        "",
        "**Matching generators: seconds per iteration** (`mnist5k`, IPC 10, paper defaults, "
        "ConvNet-128×3; median over timed iterations; compute floor = one no-grad forward "
        "of the iteration's real images + forward/backward of its synthetic images through "
        "a fresh network, one floor pass after each timed iteration in the same process; "
        "peak RSS of that process; "
        "allocator `tuned` = what the CLI does, see `distill_data/runtime.py`)",
        "",
        "| method | device | precision | allocator | real / syn images per it | s/it "
        "| compute floor s | ratio | peak RSS MiB | peak GPU MiB "
        "| official code s/it (CPU) | × official | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (method, device, _, alloc), (row, r) in sorted(latest.items()):
        off = _official_speed(results, method)
        off = off if device == "cpu" else None  # the official figures are CPU figures
        ratio = f"{row['s_per_iter_median'] / off:.2f}" if off else "—"
        gpu = row.get("peak_gpu_mib")
        out.append(
            f"| {method} | {device} | {row['precision']} | {alloc} | "
            f"{row['real_images_per_iter']} / {row['syn_images_per_iter']} | "
            f"{row['s_per_iter_median']:.3f} | {row['compute_floor_s_median']:.3f} | "
            f"{row['ratio_to_floor']:.2f} | {row['peak_rss_mib']:.0f} | "
            f"{'—' if gpu is None else f'{gpu:.0f}'} | {off if off is not None else '—'} | "
            f"{ratio} | {r['date'][:16]} |"
        )
    m = runs[-1]["machine"]
    out += [
        "",
        f"On {m['nproc']} × {m['cpu_model']}, torch {m['torch']}, "
        f"{runs[-1]['rows'][0]['steps_timed']} timed iterations each, by "
        "`bench/matching_speed.py`.",
    ]
    return out


@functools.cache
def _defaults(method: str) -> dict:
    return method_defaults(method)


def _setting(key: str, value) -> str:
    if key == "siamese":
        return "DSA per image" if value == "sample" else f"siamese={value}"
    if key == "precision":
        return str(value)
    if key == "channels_last":
        return "channels-last" if value else "channels_last=false"
    if isinstance(value, bool):  # as --set takes it
        return f"{key}={str(value).lower()}"
    if isinstance(value, float):
        return f"{key}={value:g}"
    return f"{key}={value}"


def _settings(r: dict, speed: bool = True) -> str:
    """The settings of a run that differ from its method's defaults today (``speed=False``:
    without the fast-mode ones, bf16 and channels-last). A key the run did not record
    is an option added later whose default is what the run did (a later option that
    changes old behaviour gets an upgrade step that records the old value)."""
    defaults, cfg = _defaults(r["method"]), r["config"]
    first = ("siamese", "precision", "channels_last")
    keys = [k for k in first if k in cfg] + sorted(k for k in cfg if k not in first)
    return ", ".join(
        _setting(k, cfg[k])
        for k in keys
        if k in defaults
        and k not in NOT_SETTINGS
        and cfg[k] != defaults[k]
        and (speed or k not in ("precision", "channels_last"))
    )


def _precision(r: dict) -> str:
    return r["config"].get("precision", "fp32")  # coresets have no precision setting


def _device(r: dict) -> str:
    return r["machine"]["gpu"] if r["device"].startswith("cuda") else "CPU"


def official_reference(results: list[dict]) -> dict:
    """The official code's figures on this split (``bench/results/official_mnist5k.json``,
    measured by hand when the generators were compared with it), or {} without that file."""
    return next((r for r in results if r.get("benchmark") == "official-reference"), {})


def _official_speed(results: list[dict], method: str) -> float | None:
    return official_reference(results).get("speed", {}).get(method, {}).get("s_per_iter")


def official_accuracy_table(results: list[dict]) -> list[str]:
    """Ours against the official code at the same iteration count and evaluation budget,
    pooled over every build seed (one run per seed: CPU first, then the newest)."""
    official = {
        m: {int(it): tuple(v) for it, v in ref.items()}
        for m, ref in official_reference(results).get("accuracy", {}).items()
        if m != "protocol"
    }
    runs = [
        r
        for r in results
        if r.get("benchmark") == "matching-accuracy"
        and r["ipc"] == 10
        and r["method"] in official
        and _settings(r) in ("", "DSA per image")
        and r["eval"]["runs"] >= 3
        and r["eval"]["epochs"] == 300
    ]
    out: list[str] = []
    for method, ref in official.items():
        for st, it in ((st, it) for st in ("", "DSA per image") for it in ref):
            o_mean, o_std = ref[it]
            per_seed: dict[int, dict] = {}
            for r in sorted(runs, key=lambda r: (_device(r) == "CPU", r["date"])):
                pts = {p["iterations"]: p for p in r["curve"]}
                if r["method"] == method and _settings(r) == st and it in pts:
                    per_seed[r["seed"]] = {"run": r, "point": pts[it]}
            if not per_seed:
                continue
            accs = [a for v in per_seed.values() for a in v["point"]["accuracy"]["accs"]]
            mean = statistics.mean(accs)
            std = statistics.pstdev(accs)
            sets = "; ".join(
                f"seed {s} ({_device(v['run'])}): {v['point']['accuracy']['mean']:.2f}"
                for s, v in sorted(per_seed.items())
            )
            out.append(
                f"| {method} | {st} | {it} | {mean:.2f} ± {std:.2f} ({len(accs)} models, "
                f"{len(per_seed)} sets) | {sets} | {o_mean:.2f} ± {o_std:.2f} | "
                f"{mean - o_mean:+.2f} |"
            )
    if not out:
        return []
    return [
        "",
        "**Against the official code** (`mnist5k`, IPC 10, the official code run on the same "
        "split; 3 ConvNets × 300 epochs per set, final epoch; ours pooled over every model "
        "of every build seed, std over models; the iteration-0 row is the real-image init, "
        "a draw of its own)",
        "",
        "| method | settings | iterations | ours | per seed | official | difference |",
        "|---|---|---|---|---|---|---|",
        *out,
    ]


def matching_accuracy_table(results: list[dict]) -> list[str]:
    # other build seeds only enter the comparison with the official code
    runs = [r for r in results if r.get("benchmark") == "matching-accuracy" and r["seed"] == 0]
    if not runs:
        return []
    ipcs = sorted({r["ipc"] for r in runs})
    out = []
    # (a) the grid: fp32 runs, final point per (method, settings, IPC); of several runs
    # of one cell the one that went furthest (then: GPU, then newest) fills it
    grid = [r for r in runs if _precision(r) == "fp32"]
    best: dict[tuple[str, str, int], dict] = {}
    for r in sorted(
        grid, key=lambda r: (r["curve"][-1]["iterations"], _device(r) != "CPU", r["date"])
    ):
        best[(r["method"], _settings(r), r["ipc"])] = r  # the last (best) run wins
    devices = sorted({_device(r) for r in best.values()}, key=lambda d: d == "CPU")
    main_dev = devices[0]
    cells: dict[tuple[str, str], dict[int, str]] = {}
    for (method, st, ipc), r in best.items():
        first, last = r["curve"][0], r["curve"][-1]
        planned = r["iterations_planned"]
        if last["iterations"] == 0:
            txt = _pm(last["accuracy"])
            if method not in CORESETS:
                txt = f"init {txt}; {planned} it not reached"
        else:
            txt = f"**{_pm(last['accuracy'])}** ({last['iterations']} it)"
            if first["iterations"] == 0:
                txt += f", init {first['accuracy']['mean']:.2f}"
        if _device(r) != main_dev:
            txt += f" ({_device(r)})"
        cells.setdefault((method, st), {})[ipc] = txt
    ev = grid[0]["eval"]
    out += [
        "",
        f"**Matching generators against coresets, by IPC** (`mnist5k`, built and evaluated "
        f"on {main_dev} unless a cell says otherwise; test accuracy %, mean ± std over "
        f"{ev['runs']} freshly trained ConvNet-128×3 at the final epoch of {ev['epochs']}; "
        "random draws a fresh subset per model; `init` = the same set before any iteration)",
        "",
        "| method | settings | " + " | ".join(f"IPC {i}" for i in ipcs) + " |",
        "|---|---|" + "---|" * len(ipcs),
    ]
    for (method, st), row in sorted(cells.items(), key=lambda kv: _rank(kv[0][0])):
        out.append(f"| {method} | {st} | " + " | ".join(row.get(i, "—") for i in ipcs) + " |")
    # (b) accuracy against iterations (every run with more than one point)
    curves = [r for r in runs if len(r["curve"]) > 1]
    its = sorted({p["iterations"] for r in curves for p in r["curve"]})
    if curves:
        out += [
            "",
            "**Accuracy against iterations** (same protocol; build seconds to the last "
            "point in brackets, evaluation excluded; these runs shared their machine with "
            "other benchmarks (6 jobs on one GPU; 2 one-thread jobs on the 2-core CPU), "
            "so the seconds are not speed figures: speed is the table above)",
            "",
            "| method | settings | device | IPC | "
            + " | ".join(f"{i} it" for i in its)
            + " | eval |",
            "|---|---|---|---|" + "---|" * len(its) + "---|",
        ]
        key = lambda r: (r["ipc"], _device(r), _rank(r["method"]), _settings(r))  # noqa: E731
        for r in sorted(_merge_curves(curves), key=key):
            pts = {p["iterations"]: p for p in r["curve"]}
            row = [_pm(pts[i]["accuracy"]) if i in pts else "" for i in its]
            last = r["curve"][-1]
            row[its.index(last["iterations"])] += f" [{last['build_seconds']:.0f} s]"
            a = last["accuracy"]
            out.append(
                f"| {r['method']} | {_settings(r)} | {_device(r)} | {r['ipc']} | "
                + " | ".join(row)
                + f" | {a['runs']} × {a['epochs']} ep |"
            )
    # (c) bf16 against fp32 at the same iteration count, same device and method
    parity = []
    for r in runs:
        if _precision(r) == "fp32":
            continue
        ref = [
            f
            for f in runs
            if (f["method"], f["ipc"], _device(f)) == (r["method"], r["ipc"], _device(r))
            and _precision(f) == "fp32"
            and _settings(f) == _settings(r, speed=False)
        ]
        for pt in r["curve"]:
            for f in ref:
                base = {q["iterations"]: q for q in f["curve"]}.get(pt["iterations"])
                if base is not None:
                    d = pt["accuracy"]["mean"] - base["accuracy"]["mean"]
                    parity.append(
                        f"| {r['method']} | {_settings(r)} | {_device(r)} | {r['ipc']} | "
                        f"{pt['iterations']} | {_pm(pt['accuracy'])} | "
                        f"{_pm(base['accuracy'])} | {d:+.2f} |"
                    )
    if parity:
        out += [
            "",
            "**bf16 against fp32** (same method, IPC, device and iteration count; target: "
            "within 0.3 points)",
            "",
            "| method | settings | device | IPC | iterations | bf16 | fp32 | difference |",
            "|---|---|---|---|---|---|---|---|",
            *sorted(set(parity)),  # two runs of one trajectory give the same row
        ]
    return out


def seed_table(results: list[dict]) -> list[str]:
    """The matching generators across build seeds at IPC 10 (is DataDAM or NCFM ahead of
    DM after 1000 iterations?): every iteration count that two or more seeds
    of a method reached on one device, at default settings, pooled over every model of
    every seed, beside the per-seed difference to DM built from the same seed (the same
    real-image init, so the pairs share everything but the method)."""
    runs = [
        r
        for r in results
        if r.get("benchmark") == "matching-accuracy"
        and r["ipc"] == 10
        and r["method"] not in CORESETS
        and _settings(r) == ""
    ]
    acc: dict[tuple[str, str, int], dict[int, dict]] = defaultdict(dict)
    for r in sorted(_merge_curves(runs), key=lambda r: r["date"]):  # the newest run wins
        for p in r["curve"]:
            if p["iterations"]:  # iteration 0 is the init every method of a seed shares
                acc[(_device(r), r["method"], p["iterations"])][r["seed"]] = p["accuracy"]
    out = []
    by_row = lambda kv: (kv[0][0], kv[0][2], _rank(kv[0][1]))  # noqa: E731 device, its, method
    for (dev, method, it), seeds in sorted(acc.items(), key=by_row):
        if len(seeds) < 2:
            continue
        accs = [a for s in seeds.values() for a in s["accs"]]
        per_seed = "; ".join(f"{s}: {a['mean']:.2f}" for s, a in sorted(seeds.items()))
        dm = acc.get((dev, "dm", it), {})
        diffs = [seeds[s]["mean"] - dm[s]["mean"] for s in sorted(seeds) if s in dm]
        vs_dm = ""
        if method != "dm" and diffs:
            spread = f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
            each = ", ".join(f"{d:+.2f}" for d in diffs)
            vs_dm = f"{statistics.mean(diffs):+.2f}{spread} ({each})"
        out.append(
            f"| {method} | {dev} | {it} | {statistics.mean(accs):.2f} ± "
            f"{statistics.pstdev(accs):.2f} ({len(accs)} models) | {per_seed} | {vs_dm} |"
        )
    if not out:
        return []
    return [
        "",
        "**Across build seeds** (is a method ahead of DM at IPC 10? `mnist5k`, IPC 10, "
        "default settings; each seed draws its own real-image init and networks; 3 "
        "ConvNets × 300 epochs per set, final epoch; pooled mean ± std over every model of "
        "every seed; vs dm: the mean ± sample std of the per-seed differences to DM built "
        "from the same seed, each in brackets)",
        "",
        "| method | device | iterations | pooled | per seed | vs dm, same seeds |",
        "|---|---|---|---|---|---|",
        *out,
    ]


def _merge_curves(runs: list[dict]) -> list[dict]:
    """Runs of one trajectory, as one curve: same method, seed, device, settings and
    evaluation, whose configs differ only in the iteration count, and whose shared
    points scored exactly the same models (the proof that they followed the same
    trajectory: a later run adding the 50/200 points to a 0/100/1000 one, say). Runs
    that disagree on a shared point stay separate rows."""

    def ident(r: dict) -> str:
        cfg = {k: v for k, v in r["config"].items() if k not in ("iterations", "checkpoint_every")}
        return json.dumps(
            [r["method"], r["seed"], _device(r), r["ipc"], cfg, r["eval"]], sort_keys=True
        )

    merged: dict[str, list[dict]] = {}
    for r in sorted(runs, key=lambda r: r["date"]):
        same = merged.setdefault(ident(r), [])
        for m in same:
            pts = {p["iterations"]: p for p in m["curve"]}
            shared = [p for p in r["curve"] if p["iterations"] in pts]
            if all(
                p["accuracy"]["accs"] == pts[p["iterations"]]["accuracy"]["accs"] for p in shared
            ):
                new = [p for p in r["curve"] if p["iterations"] not in pts]
                m["curve"] = sorted(m["curve"] + new, key=lambda p: p["iterations"])
                break
        else:
            same.append({**r, "curve": list(r["curve"])})
    return [m for ms in merged.values() for m in ms]


def teacher_tables(results: list[dict]) -> list[str]:
    out: list[str] = []
    teachers = [r for r in results if r.get("benchmark") == "teacher"]
    if teachers:
        out += [
            "",
            "**Teachers** (`distill-data teacher`, trained on `mnist5k`; the tables below "
            "name the teacher they used by its accuracy in brackets; a teacher retrained "
            "later keeps its earlier row)",
            "",
            "| model | epochs | trained | test accuracy % | train s |",
            "|---|---|---|---|---|",
        ]
        for r in sorted(
            teachers, key=lambda r: (r["config"]["model"], r.get("trained", r["date"]))
        ):
            secs = r["train_seconds"]
            out.append(
                f"| {r['config']['model']} (width {r['config']['width'] or 'default'}) | "
                f"{r['config']['epochs']} | {r.get('trained', r['date'])[:10]} | "
                f"{r['test_accuracy']:.2f} | {'—' if secs is None else f'{secs:.0f}'} |"
            )
    out += ptq_tables(results)
    soft = [r for r in results if r.get("benchmark") == "soft-label"]
    if soft:
        out += [
            "",
            "**Soft-label condensation** (`mnist5k`; evaluation models trained by knowledge "
            "distillation from the stored logits, or from the teacher(s) on every batch "
            "(online); the random baseline at the same IPC is relabelled the same way by the "
            "teachers the column names; INFER stores K·ipc_init real images plus M "
            "compensators and expands them to K·ipc_init·(M+1) images, the paper's "
            "accounting; peak RSS of the build, * = of the whole benchmark process, build "
            "and evaluation, for runs that did not record the build's own)",
            "",
            "| method | IPC | stored images | device | build s | peak RSS MiB | soft labels | "
            "labelling teachers | accuracy | random + soft labels | eval |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(soft, key=lambda r: (r["ipc"], r["method"], r["relabel"])):
            s_, rnd = r["eval"]["results"]["synthetic"], r["eval"]["results"]["random"]
            out.append(
                f"| {r['method']}{_options(r)} | {r['ipc']} | {r['stored_images']} | "
                f"{_device(r)} | "
                f"{_build_seconds(r)} | {_build_rss(r)} | "
                f"{r['relabel']}"
                f"{_recipe(r)} | "
                f"{_label_teachers(r)} | {s_['mean']:.2f} ± {s_['std']:.2f} | "
                f"{rnd['mean']:.2f} ± {rnd['std']:.2f} | {s_['runs']} × {s_['epochs']} ep, "
                f"{s_['labels']} |"
            )
    return out + generation_cost_table(results)


def generation_cost_table(results: list[dict]) -> list[str]:
    """What each teacher-driven generator costs per image: the calibration sets (ZeroQ,
    Genie) and the soft-label sets' builds alone (SRe2L, INFER)."""
    rows = []
    for r in results:
        if r.get("benchmark") == "calibration-set":
            # the set file it wrote: calib_mnist5k_genie_256_gpu4000.json -> .h5 name
            name = re.sub(r"^calib_[^_]+_", "calib_", r["_stem"]) + ".h5"
            its = f"{r['config']['iterations']} per batch"
            rss, images, ipc = r["peak_rss_mib_process"], r["count"], 0
        elif r.get("benchmark") == "generation-cost":
            name, its, rss = f"IPC {r['ipc']}", "defaults", r["peak_rss_mib_build"]
            images, ipc = r["stored_images"], r["ipc"]
        else:
            continue
        spi = r["seconds_per_image"]
        gpu = _device(r) != "CPU"
        where = _device(r) if gpu else f"CPU, {r['machine']['torch_threads']} thread(s)"
        # optional fields: a run's own note; why its seconds are not a valid time
        note = r.get("note") or r.get("timing_note", "")
        rows.append(
            (
                r["method"],
                ipc,
                f"| {r['method']} | {name} | {images} | {its} | {where} | "
                f"{'not valid' if spi is None else f'{spi:.2f}'} | {rss:.0f} | {note} |",
            )
        )
    if not rows:
        return []
    return [
        "",
        "**Generation cost of the teacher-driven generators** (`mnist5k` ResNet teacher; "
        "INFER also the ConvNet-BN; wall seconds per stored image and peak RSS: of the "
        "build inside the benchmark process for the calibration sets, of a whole "
        "`distill-data build` child process, start-up and loading included, for the "
        "IPC rows)",
        "",
        "| method | set | images | iterations | device | s/image | peak RSS MiB | note |",
        "|---|---|---|---|---|---|---|---|",
        *(row for *_, row in sorted(rows)),
    ]


def _build_seconds(r: dict) -> str:
    if r["build_seconds"] is None:
        return "— (set reused)"
    if r["resumed_from_checkpoint"]:
        return f"{r['build_seconds']:.0f} (resumed: last part only)"
    return f"{r['build_seconds']:.0f} ({r['seconds_per_image']:.2f} s/image)"


def _build_rss(r: dict) -> str:
    """The build's peak RSS; some runs recorded only the whole process's (null)."""
    if r["peak_rss_mib_build"] is not None:
        return f"{r['peak_rss_mib_build']:.0f}"
    if r["build_seconds"] is None:  # set reused: nothing was built
        return "—"
    return f"{r['peak_rss_mib_process']:.0f} *"


def _options(r: dict) -> str:
    """Generator settings off their defaults, and the build seed unless 0."""
    opts = [f"{k}={v}" for k, v in sorted(r["options"].items())]
    opts += [f"seed {r['seed']}"] if r["seed"] else []
    return f" ({', '.join(opts)})" if opts else ""


def _recipe(r: dict) -> str:
    return "" if r["recipe"] == "dc" else f", {r['recipe']} student recipe"


def _label_teachers(r: dict) -> str:
    """Who labelled the random baseline (and, online, both sets)."""
    names = "ResNet" if r["label_teachers"] == 1 else "ResNet + ConvNet-BN (mean logits)"
    if r["method"] == "infer" and r["relabel"] == "stored":
        names = f"set: ResNet + ConvNet-BN; baseline: {names}"
    return names


def ptq_tables(results: list[dict]) -> list[str]:
    """One PTQ table per (observer, first/last-layer bits), merging every run of that
    setting: columns are the calibration sets, rows the bit widths, a cell the newest
    run's figure (runs repeat the real/noise columns with the same seed); then each
    stored set against real images and noise at the target widths."""
    runs = sorted(
        (r for r in results if r.get("benchmark") == "ptq-calibration"), key=lambda r: r["date"]
    )
    groups: dict[tuple[str, int | None], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["ptq"]["observer"], r["ptq"]["first_last_bits"]), []).append(r)
    out: list[str] = []
    targets: list[str] = []
    # the default (first/last layer at 8 bits) first, then every layer quantized
    for (observer, first_last), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][1] is None, kv[0][0])
    ):
        acc: dict[tuple[str, str], dict] = {}
        for r in rs:  # newest last, so it wins
            acc.update({(row["bits"], row["calib"]): row for row in r["results"]})
        calibs = list(dict.fromkeys(c for _, c in acc))
        # stored sets first, then real:N, then noise:N
        calibs.sort(key=lambda c: 2 if c.startswith("noise:") else c.startswith("real:"))
        order = list(dict.fromkeys(row["bits"] for r in rs for row in r["results"]))
        order.sort(key=lambda b: tuple(-n for n in parse_bits(b)))
        fp32 = rs[-1]["results"][0]["fp32_accuracy"]
        layers = (
            "first/last layer quantized like the rest"
            if first_last is None
            else f"first/last layer {first_last}-bit"
        )
        out += [
            "",
            f"**Data-free calibration: PTQ of the ResNet teacher, observer `{observer}`, "
            f"{layers}** (`mnist5k` test accuracy %, 1000 images, so 0.1 point = one image; "
            "in brackets the logit SQNR of the quantized network against the float one on "
            f"the same images, dB, higher is better; fp32 {fp32:.2f}; per-channel symmetric "
            "weights, per-tensor activations, BN folded; 256 calibration images each; — = "
            "not measured)",
            "",
            "| bits | " + " | ".join(calibs) + " |",
            "|---" * (len(calibs) + 1) + "|",
        ]
        for b in order:
            cells = [_ptq_cell(acc[(b, c)]) if (b, c) in acc else "—" for c in calibs]
            out.append(f"| {b} | " + " | ".join(cells) + " |")
        if first_last == 8:  # the targets are read at the default
            targets += _noise_rows(observer, acc, calibs)
    if targets:
        out += [
            "",
            "**Calibration sets against real images and Gaussian noise** (targets: at W8A8 "
            "within 0.5 points of real calibration, at W4A8 within 2, ahead of noise at "
            "every width; first/last layer 8-bit; each cell is the set's figure "
            "minus the reference's, so positive = the set is better: accuracy in points of "
            "test accuracy (0.1 = one image), fidelity in dB of logit SQNR against the float "
            "network)",
            "",
            "| observer | bits | set | vs real: accuracy | vs noise: accuracy | "
            "vs noise: SQNR dB |",
            "|---|---|---|---|---|---|",
        ] + targets
    return out


def _ptq_cell(row: dict) -> str:
    sqnr = row["logit_sqnr_db"]  # None: the quantized outputs equal the float ones
    return f"{row['quant_accuracy']:.2f} ({'exact' if sqnr is None else f'{sqnr:.1f}'})"


def _noise_rows(observer: str, acc: dict[tuple[str, str], dict], calibs: list[str]) -> list[str]:
    """Each stored set against real:N and noise:N at the target widths."""
    rows = []

    def diff(r: dict, ref: dict | None, key: str) -> str:
        if ref is None or r[key] is None or ref[key] is None:  # SQNR None: exact
            return "—"
        return f"{r[key] - ref[key]:+.2f}"

    for b in TARGET_BITS:
        real, noise = (
            next((acc[(b, c)] for c in calibs if c.startswith(kind) and (b, c) in acc), None)
            for kind in ("real:", "noise:")
        )
        for r in (acc[(b, c)] for c in calibs if c.endswith(".h5") and (b, c) in acc):
            rows.append(
                f"| {observer} | {b} | {r['calib']} | {diff(r, real, 'quant_accuracy')} | "
                f"{diff(r, noise, 'quant_accuracy')} | {diff(r, noise, 'logit_sqnr_db')} |"
            )
    return rows


def cost_tables(results: list[dict]) -> list[str]:
    """What a build and an evaluation cost at the defaults: seconds per iteration of each
    matching generator on CPU (the speed benchmark) and GPU (its accuracy runs), the
    default iteration count at that pace, the official code's CPU figure; then the
    seconds of ``eval``'s default protocol per IPC."""
    speed: dict[str, tuple[dict, dict]] = {}
    for r in sorted(
        (r for r in results if r.get("benchmark") == "matching-speed"), key=lambda r: r["date"]
    ):
        for row in r["rows"]:
            if (row["device"], row["precision"], row["allocator"]) == ("cpu", "fp32", "tuned"):
                speed[row["method"]] = (row, r)  # the newest wins
    gpu: dict[str, dict] = {}  # default settings, fp32; IPC 10 first, then the newest
    for r in sorted(
        (
            r
            for r in results
            if r.get("benchmark") == "matching-accuracy"
            and r["device"].startswith("cuda")
            and r["s_per_iter_median"] is not None
            and _settings(r) == ""
        ),
        key=lambda r: (r["ipc"] == 10, r["date"]),
    ):
        gpu[r["method"]] = r
    out: list[str] = []
    # a run that shared its GPU (its note says so) gives an upper bound
    shared = {m for m, g in gpu.items() if "shared" in g.get("note", "")}
    for method in sorted(set(speed) | set(gpu), key=_rank):
        its = _defaults(method)["iterations"]
        cells = [method, "—", "—", "—", "—", "—", "—"]
        if method in speed:
            row, r = speed[method]
            cpu = row["s_per_iter_median"]
            cells[1:3] = [f"{cpu:.2f}", _duration(cpu * its)]
            off = _official_speed(results, method)
            if off:
                cells[5:7] = [f"{off:.2f}", f"{cpu / off:.2f}"]
        if method in gpu:
            g = gpu[method]
            at = "" if g["ipc"] == 10 else f" (IPC {g['ipc']})"
            spi, le = g["s_per_iter_median"], "≤ " if method in shared else ""
            cells[3:5] = [f"{le}{spi:.3f}{at}", le + _duration(spi * its)]
        out.append(f"| {' | '.join(cells[:1])} | {its:,} | " + " | ".join(cells[1:]) + " |")
    if not out:
        return []
    gpus = sorted({_device(g) for g in gpu.values()})
    ev = EvalConfig()
    lines = [
        f"**Build** (`mnist5k`, IPC 10 unless a cell says otherwise, each method's defaults, "
        f"fp32; CPU: {_speed_machine(speed)}, median of timed iterations with the allocator "
        f"the CLI sets; GPU: {', '.join(gpus) or '—'}, median iteration of an accuracy run"
        + (
            ", ≤ where that GPU ran other benchmark jobs at the same time, so an upper bound"
            if shared
            else ""
        )
        + "; × official = our CPU seconds per iteration over the official code's on the same "
        "machine kind)",
        "",
        "| method | default iterations | CPU s/it | CPU, all iterations | GPU s/it "
        "| GPU, all iterations | official code CPU s/it | × official |",
        "|---|---|---|---|---|---|---|---|",
        *out,
    ]
    return lines + eval_cost_table(results, ev.runs, ev.epochs)


def torchrun_table(results: list[dict]) -> list[str]:
    """torchrun against one process (bench/torchrun.py): seconds, speed-up, the share of
    the time spent in collectives, and whether the output was the same."""
    runs: dict[tuple[str, int, str], dict] = {}
    for r in sorted(
        (r for r in results if r.get("benchmark") == "torchrun"), key=lambda r: r["date"]
    ):
        runs[(r["stage"], r["processes"], r.get("device", "cpu"))] = r
    if not runs:
        return []
    order = {"dm": 0, "sre2l": 1, "eval3": 2, "eval6": 3}
    out = []

    def key(kv):
        (stage, k, device), _ = kv
        return (device != "cpu", order.get(stage, 9), k)

    for (stage, _k, device), r in sorted(runs.items(), key=key):
        st = r["settings"]
        if stage == "dm":
            work = f"DM, mnist5k IPC {st['ipc']}, {st['iterations']} iterations"
        elif stage == "sre2l":
            work = f"SRe2L, mnist5k IPC {st['ipc']}, {st['iterations']} its × 10 batches"
        else:
            extra = f" + {st['runs']} on random subsets" if st["baselines"] else ""
            work = f"eval: {st['runs']} ConvNets on the set{extra}, {st['epochs']} epochs"
        if device != "cpu":
            work += f" ({device}, {r.get('backend', 'nccl')})"
        if "output" in r:
            o = r["output"]
            same = (
                "bit-identical"
                if o["bitwise_equal"] and o["labels_equal"]
                else f"max Δ {o['max_abs_image_difference']:.1e}"
            )
        else:
            same = "identical" if r["identical_results"] else "differs"
        out.append(
            f"| {work} | {r['one_process']['seconds']:.1f} s | {r['torchrun']['seconds']:.1f} s "
            f"| {r['speedup']:.2f}× | {100 * r['communication_share']:.1f} % | {same} |"
        )
    k = sorted({kk for _, kk, _ in runs})
    machine = next(iter(runs.values()))["machine"]
    return [
        "",
        f"torchrun, gloo, {'/'.join(map(str, k))} ranks × 1 thread against one process × 1 "
        f"thread ({machine['nproc']} × {machine['cpu_model']}; `bench/torchrun.py`; "
        "collectives = seconds inside collectives, waiting for the slower rank included, "
        "over the ranks' time)",
        "",
        "| work | 1 process | torchrun | speed-up | collectives | output vs 1 process |",
        "|---|---|---|---|---|---|",
        *out,
    ]


def _speed_machine(speed: dict[str, tuple[dict, dict]]) -> str:
    machines = {(r["machine"]["nproc"], r["machine"]["cpu_model"]) for _, r in speed.values()}
    return "; ".join(f"{n} × {model}" for n, model in sorted(machines)) or "—"


def eval_cost_table(results: list[dict], runs: int, epochs: int) -> list[str]:
    """Seconds of ``runs`` × ``epochs`` of the evaluation protocol (hard labels), from the
    median seconds per model-epoch of every recorded evaluation at that IPC and device."""
    per: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in results:
        if r.get("benchmark") == "matching-accuracy":
            accs = [p["accuracy"] for p in r["curve"]]
            dev = "GPU" if r["device"].startswith("cuda") else "CPU"
        elif r.get("benchmark") == "coreset":  # run on the CPU
            accs, dev = [r["accuracy"]], "CPU"
        else:
            continue
        for a in accs:
            per[(dev, r["ipc"])].append(a["seconds"] / (a["runs"] * a["epochs"]))
    if not per:
        return []
    ipcs = sorted({ipc for _, ipc in per})
    lines = [
        "",
        f"**Evaluation** (`distill-data eval` defaults: {runs} ConvNets × {epochs} epochs, "
        "one set; `--baseline random` trains as many again; wall time from the median "
        "seconds per model-epoch of the recorded 3-model evaluations, in brackets how many; "
        "CPU runs had 1-2 threads, often beside another job, GPU runs shared the GPU)",
        "",
        "| device | " + " | ".join(f"IPC {i}" for i in ipcs) + " |",
        "|---|" + "---|" * len(ipcs),
    ]
    for dev in ("CPU", "GPU"):
        cells = [
            f"{_duration(statistics.median(per[(dev, i)]) * runs * epochs)} ({len(per[(dev, i)])})"
            if per.get((dev, i))
            else "—"
            for i in ipcs
        ]
        lines.append(f"| {dev} | " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------------- students

#: bench/student.py's runs, in its order; unknown runs go last within their bit width
STUDENT_RUNS = ("float", "ce", "qd4", "qd2", "dq2", "dq2w", "lsq44", "lsq24", "qat44")


def _seeds_pm(values: list[float]) -> str:
    """Mean ± population std over seeds, with the seed count (no std for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f} ({len(values)} seeds)"


def _bits(q: dict) -> str:
    return f"W{q['w_bits']}" + ("" if q.get("a_bits") is None else f"A{q['a_bits']}")


def _buckets(q: dict) -> str:
    return f"buckets of {q['bucket_size']}" if q.get("bucket_size") else "global scale"


def _student_label(r: dict) -> str:
    """What a student run is, from what its report says it did."""
    rep, q = r["report"], r["report"].get("quant")
    if q is None:
        return "float, KD" if rep.get("teacher") else "float, cross-entropy, no teacher"
    method, bits = q["method"], _bits(q)
    if method == "qd":
        return f"qd {bits} (Polino, {_buckets(q)})"
    if method == "dq":
        start = ", from the float KD student" if r["settings"].get("teacher_start") else ""
        if r["settings"].get("student", {}).get("dq_weights"):
            start += ", weights trained too"
        return f"dq {bits} (Polino's learned points, {_buckets(q)}{start})"
    if method == "qat":
        return f"qat {bits} (fake quant + STE)"
    return f"{method} {bits}"


def _student_bits(r: dict) -> int:
    q = r["report"].get("quant")
    return 32 if q is None else q["w_bits"]


def _student_order(run: str) -> int:
    return STUDENT_RUNS.index(run) if run in STUDENT_RUNS else len(STUDENT_RUNS)


def _student_groups(results: list[dict]) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """(dataset, teacher) -> run -> its files, one per seed (the newest), by seed."""
    groups: dict[tuple[str, str], dict[str, dict[int, dict]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for r in sorted(
        (r for r in results if r.get("benchmark") == "student"), key=lambda r: r["date"]
    ):
        groups[(r["report"]["dataset"], r["teacher_name"])][r["run"]][r["seed"]] = r
    return {
        key: {run: [seeds[s] for s in sorted(seeds)] for run, seeds in runs.items()}
        for key, runs in groups.items()
    }


def _ptq_groups(results: list[dict], dataset: str, teacher: str) -> dict:
    """(bits, bucket size) -> seed -> test accuracy of bench/student.py's PTQ of the float
    student (the file name carries the dataset: student_<dataset>_<teacher>_ptq_s<seed>)."""
    acc: dict[tuple[int, int | None], dict[int, float]] = defaultdict(dict)
    for r in sorted(
        (r for r in results if r.get("benchmark") == "student-ptq"), key=lambda r: r["date"]
    ):
        if r["teacher_name"] == teacher and r["_stem"].split("_")[1] == dataset:
            for row in r["results"]:
                acc[(row["bits"], row["bucket_size"])][r["seed"]] = row["test_accuracy"]
    return acc


def _one_of(values) -> str:
    return " / ".join(str(v) for v in sorted(set(values), key=str))


def _fp32_bytes(run: dict) -> int:
    """The float student's parameters in fp32: the one baseline of every size ratio (the
    reports' own fp32 field counted BatchNorm buffers in some versions, not in others)."""
    return 4 * run["report"]["student"]["parameters"]


def zeroshot_table(results: list[dict]) -> list[str]:
    """Zero-shot QAT of the teacher on a data-free set against real and noise images of
    the same count, and against PTQ calibrated on the same images."""
    runs = [r for r in results if r.get("benchmark") == "zero-shot-qat"]
    if not runs:
        return []
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        weights = r["settings"].get("lsq_weights", "per tensor")
        # runs from before the MSE start existed (no "lsq_step_init") had the paper's
        init = r["settings"].get("lsq_step_init", "lsq")
        steps = f"{weights}, {'MSE' if init == 'mse' else 'paper'} start"
        if r["settings"].get("lsq_freeze_weights"):
            steps += "; weights frozen"
        key = (r["teacher_name"], r["bits"], steps, r["set"], r["count"],
               r.get("device", "cpu"))  # fmt: skip
        groups.setdefault(key, []).append(r)
    order = {"zeroq": 0, "genie": 1, "real": 2, "noise": 3}
    rows = []
    for (teacher, bits, weights, name, count, device), rs in sorted(
        groups.items(),
        key=lambda kv: (*kv[0][:3], order.get(kv[0][3], 9), *kv[0][4:]),
    ):
        accs = [r["report"]["test_accuracy"] for r in rs]
        ptq = _one_of(f"{r['ptq_accuracy']:.2f}" for r in rs)
        fp32 = _one_of(f"{r['fp32_accuracy']:.2f}" for r in rs)
        its = _one_of(r["settings"]["zeroq_iterations"] for r in rs)
        what = {
            "zeroq": f"ZeroQ set from the teacher alone ({its} iterations per batch)",
            "genie": f"Genie set from the teacher alone ({its} iterations per batch)",
            "real": "random real training images",
            "noise": "Gaussian noise",
        }.get(name, name) + ("" if device == "cpu" else f" (trained on {device})")
        rows.append(
            f"| {teacher} ({fp32}) | {bits} | {weights} | {what} | {count} | "
            f"{_seeds_pm(accs)} | {ptq} |"
        )
    return [
        "",
        "**Zero-shot QAT** (`mnist5k`; the teacher itself LSQ-quantized, first/last layer "
        "8-bit, fine-tuned 30 epochs on the images alone with KD from its float self at T = "
        "4 plus feature MSE (the `zsqat` recipe); test accuracy % at the final epoch, mean ± "
        "std over seeds; PTQ = the teacher quantized at the same width, calibrated on the "
        "same images, MSE observer, weights per output channel, no training; LSQ weight "
        "steps per tensor as the paper or per output channel, every step started by the "
        "paper's 2·mean|v|/√Q_P or at the least-MSE clipping (where PTQ starts); \"weights "
        "frozen\": only the steps, biases and BatchNorm train (`freeze_weights`); teacher's "
        "fp32 accuracy in brackets)",
        "",
        "| teacher | bits | LSQ steps | trained on | images | zero-shot QAT % | PTQ % |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def student_set_table(results: list[dict]) -> list[str]:
    """Float KD students trained on stored condensed sets, against the images they use,
    beside the same student trained on the full training split; sets built and students
    trained on a GPU (NCFM, whose pool is hours on this CPU) are marked."""
    runs = [r for r in results if r.get("benchmark") == "student-from-set"]
    if not runs:
        return []
    groups: dict[tuple, list[dict]] = {}
    for r in runs:  # a retrained teacher (bench/.work is per machine) gets rows of its own
        name = f"{r['teacher_name']} ({r['report']['teacher']['test_accuracy']:.2f})"
        if r.get("teacher_weights_sha256"):  # recorded since 3 Dec 2026
            name += f" weights {r['teacher_weights_sha256'][:8]}"
        built = ", ".join(f"{k} {v}" for k, v in r["settings"]["build"].items()) or "defaults"
        key = (name, r["method"], built, r["ipc"] or 0, r.get("device", "cpu"))
        groups.setdefault(key, []).append(r)
    # teachers whose set runs predate the sets stage's own full-split run (no weights
    # recorded) take --stage runs' float student as their reference
    for (_, teacher), by_run in _student_groups(results).items():
        if "float" not in by_run:
            continue
        rs = by_run["float"]
        acc = _one_of(f"{r['report']['teacher']['test_accuracy']:.2f}" for r in rs)
        name = f"{teacher} ({acc})"
        if any(k[0] == name for k in groups) and not any(
            k[0] == name and k[1] == "full" for k in groups
        ):
            groups[(name, "full", "defaults", 0, "cpu")] = rs
    rows = []
    for (teacher, method, built, ipc, device), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1] == "full", kv[0][3], kv[0][1:])
    ):
        accs = [r["report"]["test_accuracy"] for r in rs]
        on = "" if device == "cpu" else f", on {device}"
        images = _one_of(r["report"]["data"]["images"] for r in rs)
        epochs = _one_of(r["report"]["epochs"] for r in rs)
        what = "full training split" if method == "full" else f"{method} ({built})"
        rows.append(
            f"| {teacher} | {what}{on} | {ipc or '—'} | {images} | {_seeds_pm(accs)} | {epochs} |"
        )
    return [
        "",
        "**Students from condensed sets** (`mnist5k`; the float ConvNet-BN student of the "
        "table above distilled from the teacher on each stored set, the `student` recipe "
        "(KD 0.9·T²·KL + 0.1·CE, T = 4) for the epochs shown; test accuracy % at the final "
        "epoch, mean ± std over seeds)",
        "",
        "| teacher (its accuracy; weights' sha256 where recorded) | set | IPC | images | "
        "test accuracy % | epochs |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def student_tables(results: list[dict]) -> list[str]:
    """Per (dataset, teacher): one row per student run over its seeds, the PTQ baselines
    of the float student beside the trained quantizers of their bit width, then what
    quantization-aware training costs per epoch against the float KD run."""
    out: list[str] = []
    for (dataset, teacher), runs in sorted(_student_groups(results).items()):
        files = [r for rs in runs.values() for r in rs]
        reps = [r["report"] for r in files]
        t_acc = _one_of(
            f"{rep['teacher']['test_accuracy']:.2f} %" for rep in reps if "teacher" in rep
        )
        t_par = _one_of(f"{rep['teacher']['parameters']:,}" for rep in reps if "teacher" in rep)
        s_net = _one_of(
            f"{rep['student']['model']} width {rep['student']['config']['width']}, "
            f"{rep['student']['parameters']:,} parameters"
            for rep in reps
        )
        first_last = {rep["quant"]["first_last_bits"] for rep in reps if "quant" in rep}
        rows: list[tuple[tuple, str]] = []
        for run, rs in runs.items():
            rep0 = rs[0]["report"]
            q = rep0.get("quant")
            accs = [r["report"]["test_accuracy"] for r in rs]
            if q is None:
                fl, agree = "—", "—"
                size = f"fp32 ({rep0['payload_bytes']:,} B)"
            else:
                ints = [r["report"]["integer_student"] for r in rs]
                fl = f"{statistics.mean(r['report']['float_test_accuracy'] for r in rs):.2f}"
                payload = statistics.median(i["payload_bytes"] for i in ints)
                fp32 = _fp32_bytes(rs[0])
                size = f"{fp32 / payload:.2f}× ({payload:,.0f} B)"
                agree = f"{min(i['top1_agreement_with_fake_quant'] for i in ints):.1f}"
            spe = statistics.median(r["report"]["seconds_per_epoch"] for r in rs)
            rows.append(
                (
                    (-_student_bits(rs[0]), 0, _student_order(run), run),
                    f"| {run} | {_student_label(rs[0])} | {_seeds_pm(accs)} | {fl} | {size} | "
                    f"{agree} | {_one_of(r['report']['epochs'] for r in rs)} | {spe:.2f} | "
                    f"{_one_of(r['threads'] for r in rs)} |",
                )
            )
        float_acc = {r["seed"]: r["report"]["test_accuracy"] for r in runs.get("float", [])}
        for (bits, bucket), seeds in _ptq_groups(results, dataset, teacher).items():
            base = [float_acc[s] for s in sorted(seeds) if s in float_acc]
            fl = f"{statistics.mean(base):.2f}" if len(base) == len(seeds) else "—"
            label = f"PTQ of the float KD student, uniform W{bits}, " + _buckets(
                {"bucket_size": bucket}
            )
            accs = [seeds[s] for s in sorted(seeds)]
            rows.append(
                (
                    (-bits, 1, bucket is None, 0),
                    f"| ptq{bits} ({bucket or 'global'}) | {label} | {_seeds_pm(accs)} | {fl} "
                    "| — | — | — | — | — |",
                )
            )
        layers = (
            f"; quantized runs keep the first and last layer at {_one_of(first_last)} bits"
            if first_last
            else ""
        )
        out += [
            "",
            f"**Students on `{dataset}` (teacher {teacher}: {t_acc}, {t_par} parameters; "
            f"student {s_net})** (test accuracy % of the final epoch, mean ± std over "
            "seeds; float = the same network's float weights, for quantized runs"
            f"{layers}; size = fp32 bytes over the payload bytes of the saved integer "
            "student; agrees = top-1 agreement % of the saved integer student with the "
            "trained fake-quant network on the test set, lowest over seeds; s/epoch = "
            "median over seeds; PTQ rows: the float KD student's weights quantized "
            "after training, no training, by `bench/student.py --stage ptq`)",
            "",
            "| run | what | test accuracy % | float % | size vs fp32 | agrees % | epochs "
            "| s/epoch | threads |",
            "|---|---|---|---|---|---|---|---|---|",
            *(row for _, row in sorted(rows)),
        ]
        out += _student_cost(runs, teacher)
    return out


def _student_cost(runs: dict[str, list[dict]], teacher: str) -> list[str]:
    """Seconds per epoch of every other run over the float KD run's (ratio of medians)."""
    if "float" not in runs:
        return []
    med = {
        run: statistics.median(r["report"]["seconds_per_epoch"] for r in rs)
        for run, rs in runs.items()
    }
    others = sorted(
        (run for run in runs if run != "float"),
        key=lambda run: (-_student_bits(runs[run][0]), _student_order(run), run),
    )
    if not others:
        return []
    threads = _one_of(r["threads"] for rs in runs.values() for r in rs)
    return [
        "",
        f"**Cost of the student runs against float KD** (teacher {teacher}; training "
        f"seconds per epoch, median over seeds, {threads} thread(s); × float KD = ratio of "
        "the medians; the benchmark's machine also ran other jobs, so ratios are rough)",
        "",
        "| run | what | s/epoch | × float KD |",
        "|---|---|---|---|",
        f"| float | {_student_label(runs['float'][0])} | {med['float']:.2f} | 1.00 |",
        *(
            f"| {run} | {_student_label(runs[run][0])} | {med[run]:.2f} | "
            f"{med[run] / med['float']:.2f} |"
            for run in others
        ),
    ]


#: the teacher of the README's student headline (every teacher's runs: docs/results.md)
HEADLINE_TEACHER = "resnet"


def student_headline(results: list[dict]) -> list[str]:
    """README: for the README's teacher, the float students (KD, and no teacher) and the
    most accurate trained run at each weight bit width."""
    rows = []
    for (_, teacher), runs in sorted(_student_groups(results).items()):
        if teacher != HEADLINE_TEACHER:
            continue
        t_acc = _one_of(
            f"{r['report']['teacher']['test_accuracy']:.2f} %"
            for rs in runs.values()
            for r in rs
            if "teacher" in r["report"]
        )
        best: dict[int, tuple[float, str]] = {}
        for run, rs in runs.items():
            q = rs[0]["report"].get("quant")
            if q is None:
                continue
            mean = statistics.mean(r["report"]["test_accuracy"] for r in rs)
            if q["w_bits"] not in best or mean > best[q["w_bits"]][0]:
                best[q["w_bits"]] = (mean, run)
        picks = [("fp32", "float"), ("fp32", "ce")] + [
            (f"{bits}-bit weights", run) for bits, (_, run) in sorted(best.items(), reverse=True)
        ]
        for what, run in picks:
            if run not in runs:
                continue
            rs = runs[run]
            q = rs[0]["report"].get("quant")
            if q is None:
                size = "1×"
            else:
                ints = [r["report"]["integer_student"] for r in rs]
                ratio = _fp32_bytes(rs[0]) / statistics.median(i["payload_bytes"] for i in ints)
                size = f"{ratio:.1f}×"
            accs = [r["report"]["test_accuracy"] for r in rs]
            rows.append(
                f"| {teacher} ({t_acc}) | {what} | {_student_label(rs[0])} | "
                f"{_seeds_pm(accs)} | {size} |"
            )
    if not rows:
        return []
    groups = _student_groups(results)
    datasets = _one_of(d for d, _ in groups)
    models = _one_of(
        r["report"]["student"]["model"] for g in groups.values() for rs in g.values() for r in rs
    )
    return [
        "",
        f"**Students** (`{datasets}`; `{models}` students of a teacher, test accuracy "
        "% of the final epoch, mean ± std over seeds; each weight bit width at its most "
        "accurate trained method; size = fp32 bytes over the saved integer student's; every "
        "run in `docs/results.md`)",
        "",
        "| teacher | weights | run | test accuracy % | size vs fp32 |",
        "|---|---|---|---|---|",
        *rows,
    ]


# ----------------------------------------------------------------------------- ONNX

#: the runtimes of bench/onnx_latency.py, in table order; unknown ones go last
ONNX_RUNTIMES = {
    "torch_float": "torch, float network",
    "torch_fake_quant": "torch, fake-quant student",
    "ort_float": "ORT, float model, all optimisations",
    "ort_qdq_none": "ORT, QDQ model, no graph optimisation",
    "ort_qdq_float": "ORT, QDQ model, float optimisations only",
    "ort_qdq_all": "ORT, QDQ model, all optimisations (QDQ fused into integer kernels)",
}


def onnx_tables(results: list[dict]) -> list[str]:
    """One table per ``bench/onnx_latency.py`` file (its notes: compare rows of one file,
    not across files): top-1, agreement with the torch network each ONNX model was
    exported from, and CPU latency per image against the float ONNX model."""
    out: list[str] = []
    for r in sorted(
        (r for r in results if r.get("benchmark") == "onnx-latency"),
        key=lambda r: (r["model"], r["date"]),
    ):
        lat, fid, acc = r["latency"], r["fidelity"], r["accuracy"]
        ref = lat.get("ort_float")
        names = sorted(
            lat, key=lambda k: list(ONNX_RUNTIMES).index(k) if k in ONNX_RUNTIMES else 99
        )
        rows = []
        for k in names:
            f = fid.get(k)
            agree = "—" if f is None else f"{f['top1_agreement_pct']:.1f}"
            diff = "—" if f is None else f"{f['max_abs_logit_diff']:.1e}"
            speed = (
                "—"
                if ref is None
                else " / ".join(
                    f"{ref[b] / lat[k][b]:.2f}"
                    for b in ("batch1_ms_per_image", "batch256_ms_per_image")
                )
            )
            top1 = acc.get(k)
            rows.append(
                f"| {ONNX_RUNTIMES.get(k, k)} | {'—' if top1 is None else f'{top1:.1f}'} | "
                f"{agree} | {diff} | {lat[k]['batch1_ms_per_image']:.3f} | "
                f"{lat[k]['batch256_ms_per_image']:.3f} | {speed} |"
            )
        q, ex, m = r["quant"], r["export"], r["machine"]
        epochs = [
            f"{who} {r[key]} epochs"
            for who, key in (("float network", "float_epochs"), ("student", "student_epochs"))
            if r.get(key) is not None
        ]
        if r.get("student_epochs") is not None and r.get("student_lr") is not None:
            epochs[-1] += f" from it at lr {r['student_lr']:g}"
        out += [
            "",
            f"**ONNX export of a {q['method']} {_bits(q)} student: {r['model']}** "
            f"(`{r['dataset']}`, {r['test_images']} test images; ONNX Runtime "
            f"{r['onnxruntime']}, opset {ex['opset']}, torch {r['torch']}, {r['threads']} "
            f"intra-op thread(s) on {m['nproc']} × {m['cpu_model']}"
            + (f"; {', '.join(epochs)}" if epochs else "")
            + f"; QDQ file {ex['qdq_bytes'] / 1024:.0f} KiB, float file "
            f"{ex['float_bytes'] / 1024:.0f} KiB; agrees = top-1 agreement % with the torch "
            "network the model was exported from (the fake-quant student for QDQ), max |Δ "
            "logit| against it; ms per image, median over repeats; × ORT float = its ms "
            f"over this row's, batch 1 / 256, above 1 = faster"
            + (f"; {r['notes']}" if r.get("notes") else "")
            + ")",
            "",
            "| runtime | top-1 % | agrees % | max abs logit diff | ms/image, batch 1 "
            "| ms/image, batch 256 | × ORT float |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    return out


# ----------------------------------------------------------------------------- kornia


def _kornia_ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}"


def _old_new(group: dict[str, float]) -> list[tuple[str, float | None, float | None]]:
    """{old_X: a, new_X: b, new_Y: c} -> [(X, a, b), (Y, None, c)], in the file's order."""
    names = dict.fromkeys(k.split("_", 1)[1] for k in group)
    return [(n, group.get(f"old_{n}"), group.get(f"new_{n}")) for n in names]


def _kornia_ops(row: dict) -> list[tuple[str, str, str, str]]:
    """(op, before, now, note) of one shape of ``bench/kornia_aug.py --stage speed``."""
    ops = []
    rv = row["random_view"]
    same = "same bits over 20 seeds" if rv["bitwise_identical_20_seeds"] else "bits differ"
    ops.append(
        (
            "`random_view` (SRe2L, INFER): crop + flip + roll, fwd + bwd",
            _kornia_ms(rv["old_ms"]),
            _kornia_ms(rv["new_ms"]),
            f"kornia; {same}",
        )
    )
    for what, group in (
        ("training batch", row["train_batch_augment_ms"]),
        ("mix", row["mix_ms"]),
        ("one item of `load(augment=...)`", row["load_item_ms"]),
    ):
        for name, old, new in _old_new(group):
            if name.startswith("dsa"):
                label = "DSA"
                note = f"kept (strategy {name[4:]})" if name[4:] else "kept"
            else:
                label = {"mixup": "mixup", "cutmix": "CutMix"}.get(name, f"`{name}`")
                note = "" if old is not None else "kornia, opt-in"
            now = _kornia_ms(new) if new is not None else "unchanged"
            ops.append((f"{what}: {label}", _kornia_ms(old), now, note))
    warps = row["dsa_warp_fwd_bwd_ms"]
    for name in (k[4:] for k in warps if k.startswith("dsa_")):
        note = f"kept; kornia `warp_affine`: {_kornia_ms(warps.get('kornia_' + name))}"
        diff = row.get(f"dsa_warp_max_abs_diff_{name}_randn_input")
        if diff is not None:
            note += f", outputs within {diff:.1e} on randn input"
        ops.append(
            (
                f"DSA {name} warp (matching loop), fwd + bwd",
                _kornia_ms(warps[f"dsa_{name}"]),
                "unchanged",
                note,
            )
        )
    return ops


def kornia_tables(results: list[dict]) -> list[str]:
    """``bench/kornia_aug.py``: the augmentation ops before and after the move of training
    augmentation onto kornia (newest speed run), and teachers and student recipes trained
    with the kornia pipelines against DSA."""
    out: list[str] = []
    speed = sorted(
        (r for r in results if r.get("benchmark") == "kornia-speed"), key=lambda r: r["date"]
    )
    if speed:
        r = speed[-1]
        cells: dict[str, dict[int, tuple]] = {}
        for si, row in enumerate(r["rows"]):
            for op, *rest in _kornia_ops(row):
                cells.setdefault(op, {})[si] = rest
        shapes = [f"{'×'.join(map(str, row['shape']))} ({row['data']})" for row in r["rows"]]
        m = r["machine"]
        out += [
            "",
            f"**Augmentation speed before and after kornia** (`bench/kornia_aug.py --stage "
            f"speed`, {r['date'][:10]}; {r['device'].upper()}, {r['threads']} thread(s) on "
            f"{m['nproc']} × {m['cpu_model']}, torch {m['torch']}, kornia {r['kornia']}; "
            f"before = the tree at {r['base_commit']}; ms per call on the batch shape, one "
            f"image for `load` items; {r['timing']}; unchanged = the code path was kept, its "
            "figure is before's; kornia, opt-in = a new pipeline, nothing before)",
            "",
            "| op | shape | before ms | now ms | note |",
            "|---|---|---|---|---|",
        ]
        for op, by_shape in cells.items():
            for si, (before, now, note) in sorted(by_shape.items()):
                out.append(f"| {op} | {shapes[si]} | {before} | {now} | {note} |")
    out += _kornia_accuracy(results)
    return out


def _is_default(recipe: str, _relabel: str, augment: str, mix: str) -> bool:
    """Whether a student recipe ran at its preset's augmentation and mixing."""
    return (augment, mix) == (RECIPES[recipe].augment, RECIPES[recipe].mix)


def _kornia_accuracy(results: list[dict]) -> list[str]:
    rows = []
    teachers: dict[str, dict[int, dict]] = defaultdict(dict)
    tfiles = sorted(
        (r for r in results if r.get("benchmark") == "kornia-teacher"), key=lambda r: r["date"]
    )
    for r in tfiles:
        for name, res in r["results"].items():
            teachers[name][r["seed"]] = res
    default = {
        n: statistics.mean(v["test_accuracy"] for v in s.values())
        for n, s in teachers.items()
        if all(v["config"]["pipeline"] is None for v in s.values())
    }
    ref = next(iter(default.values()), None)
    for name, seeds in teachers.items():
        accs = [seeds[s]["test_accuracy"] for s in sorted(seeds)]
        mean = statistics.mean(accs)
        t = tfiles[-1]["teacher"]
        label = "DSA (default)" if name in default else f"`{name}` (kornia)"
        rows.append(
            f"| teacher {t['model']} width {t['width']}, {t['epochs']} epochs: {label} | "
            f"{_seeds_pm(accs)} | "
            + "; ".join(f"seed {s}: {seeds[s]['test_accuracy']:.2f}" for s in sorted(seeds))
            + f" | {'—' if ref is None or name in default else f'{mean - ref:+.2f}'} |"
        )
    recipes: dict[tuple[str, str, str, str], dict] = {}
    for r in sorted(
        (r for r in results if r.get("benchmark") == "kornia-recipe"), key=lambda r: r["date"]
    ):
        recipes[(r["recipe"], r["relabel"], r["augment"].split()[0], r["mix"])] = r
    for (recipe, relabel, aug, mix), r in sorted(
        recipes.items(), key=lambda kv: (kv[0][:2], not _is_default(*kv[0]), kv[0][2:])
    ):
        preset = RECIPES[recipe]
        base = recipes.get((recipe, relabel, preset.augment, preset.mix))
        is_default = _is_default(recipe, relabel, aug, mix)
        a = r["result"]
        label = (
            f"`{recipe}` student recipe, {relabel} labels: "
            f"{'DSA' if aug == 'dsa' else f'`{aug}` (kornia)'} + "
            f"{ {'cutmix': 'CutMix'}.get(mix, mix) }" + (" (default)" if is_default else "")
        )
        diff = "—" if is_default or base is None else f"{a['mean'] - base['result']['mean']:+.2f}"
        rows.append(
            f"| {label} | {_pm(a)} ({a['runs']} runs) | "
            + ", ".join(f"{x:.1f}" for x in a["accs"])
            + f" | {diff} |"
        )
    if not rows:
        return []
    student = ""
    if recipes:
        protocols = _one_of(
            f"{r['result']['runs']} ConvNets × {r['result']['epochs']} epochs"
            for r in recipes.values()
        )
        temps = _one_of(f"{r['temperature']:g}" for r in recipes.values())
        student = (
            f"; student recipes: {protocols} on the random IPC-10 subset (a fresh draw per "
            f"run), labelled by the seed-0 DSA teacher at T = {temps}, mean ± std over runs"
        )
    return [
        "",
        "**Accuracy with the kornia pipelines against DSA** (`bench/kornia_aug.py`, `mnist5k` "
        f"test accuracy %; teachers: one network per seed, mean ± std over seeds{student}; "
        "vs default = difference of the means to the same teacher or recipe at its "
        "defaults)",
        "",
        "| setting | accuracy % | per seed / run | vs default |",
        "|---|---|---|---|",
        *rows,
    ]


def bf16_tables(results: list[dict]) -> list[str]:
    """``bench/bf16_train.py``: seconds per training step in fp32 and bf16 (newest speed
    run), and what ``precision=bf16`` does to the evaluation protocol and a teacher."""
    newest = {}
    for r in results:
        if r.get("benchmark") == "bf16-train":
            if r["stage"] not in newest or r["date"] > newest[r["stage"]]["date"]:
                newest[r["stage"]] = r
    out: list[str] = []
    if "speed" in newest:
        r = newest["speed"]
        m = r["machine"]
        flags = ", ".join(r["cpu_bf16_flags"]) or "no bfloat16 instructions"
        out += [
            "",
            f"**Training step, float32 against bfloat16** (`bench/bf16_train.py --stage speed`; "
            f"{m['nproc']} × {m['cpu_model']} ({flags}), torch {m['torch']}, "
            f"{r['settings']['threads']} thread{'s' * (r['settings']['threads'] > 1)}; "
            f"forward + backward + SGD step, median of "
            f"{r['settings']['repeats']}; `--set precision=bf16` on eval, teacher and train)",
            "",
            "| network, batch | fp32 s/step | bf16 s/step | speed-up |",
            "|---|---|---|---|",
            *(
                f"| {row['case']} | {row['fp32_s']:.3f} | {row['bf16_s']:.3f} | "
                f"{row['speedup']:.2f}× |"
                for row in r["rows"]
            ),
        ]
    rows = []
    if "eval" in newest:
        r = newest["eval"]
        st = r["settings"]
        by = {(row["ipc"], row["precision"]): row for row in r["rows"]}
        for ipc in sorted({row["ipc"] for row in r["rows"]}):
            a, b = by.get((ipc, "fp32")), by.get((ipc, "bf16"))
            if a and b:
                rows.append(
                    f"| eval: {st['runs']} ConvNets × {st['epochs']} epochs on a random IPC {ipc} "
                    f"subset | {_pm(a)} ({_duration(a['seconds'])}) | "
                    f"{_pm(b)} ({_duration(b['seconds'])}) | {b['mean'] - a['mean']:+.2f} |"
                )
    if "teacher" in newest:
        r = newest["teacher"]
        st = r["settings"]
        by = {row["precision"]: row for row in r["rows"]}
        if {"fp32", "bf16"} <= set(by):
            a, b = by["fp32"], by["bf16"]
            rows.append(
                f"| teacher: {st['model']} width {st['width']}, {st['epochs']} epochs, seed "
                f"{st['seed']} | {a['test_accuracy']:.2f} ({_duration(a['seconds'])}) | "
                f"{b['test_accuracy']:.2f} ({_duration(b['seconds'])}) | "
                f"{b['test_accuracy'] - a['test_accuracy']:+.2f} |"
            )
    if rows:
        out += [
            "",
            "**Accuracy trained in bfloat16** (`bench/bf16_train.py`; `mnist5k`, test accuracy % "
            "at the final epoch (mean ± std over runs), wall time beside; the same sets, seeds "
            "and draws, one thread, another benchmark on the other core)",
            "",
            "| training | fp32 | bf16 | bf16 − fp32 |",
            "|---|---|---|---|",
            *rows,
        ]
    return out


def headline_tables(results: list[dict]) -> list[str]:
    """The best setting of every method at every IPC (hard labels, 3 × 300 epochs), and
    the best soft-label set of every method and IPC against the random baseline with the
    same labels."""
    best: dict[tuple[str, int], dict] = {}
    for r in results:
        # build seed 0, as the grid: picking the best of several seeds would flatter
        if r.get("benchmark") != "matching-accuracy" or _precision(r) != "fp32" or r["seed"]:
            continue
        last = r["curve"][-1]
        if last["iterations"] == 0 and r["method"] not in CORESETS:
            continue  # never optimised
        cur = best.get((r["method"], r["ipc"]))
        if cur is None or last["accuracy"]["mean"] > cur["curve"][-1]["accuracy"]["mean"]:
            best[(r["method"], r["ipc"])] = r
    out: list[str] = []
    if best:
        ipcs = sorted({ipc for _, ipc in best})
        evals = {(r["eval"]["runs"], r["eval"]["epochs"]) for r in best.values()}
        out += [
            "**Accuracy** (`mnist5k` test accuracy %, mean ± std of "
            + " / ".join(f"{n} ConvNets × {e} epochs" for n, e in sorted(evals))
            + " at the final epoch; each method at its best recorded setting and iteration "
            "count, named where it is not the default; random: a fresh random real subset "
            "per model)",
            "",
            "| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |",
            "|---|" + "---|" * len(ipcs),
        ]
        for method in sorted({m for m, _ in best}, key=_rank):
            cells = []
            for ipc in ipcs:
                r = best.get((method, ipc))
                if r is None:
                    cells.append("—")
                    continue
                last = r["curve"][-1]
                extra = [f"{last['iterations']} it"] if method not in CORESETS else []
                extra += [_settings(r)] if _settings(r) else []
                cells.append(_pm(last["accuracy"]) + (f" ({', '.join(extra)})" if extra else ""))
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        for r in (r for r in results if r.get("benchmark") == "full-data"):
            a = r["accuracy"]
            out.append(
                f"| all {a['n_images']} real images ({a['runs']} × {a['epochs']} epochs) | "
                + " | ".join([_pm(a)] * len(ipcs))
                + " |"
            )
    soft: dict[tuple[str, int], dict] = {}
    for r in (r for r in results if r.get("benchmark") == "soft-label"):
        cur = soft.get((r["method"], r["ipc"]))
        mean = r["eval"]["results"]["synthetic"]["mean"]
        if cur is None or mean > cur["eval"]["results"]["synthetic"]["mean"]:
            soft[(r["method"], r["ipc"])] = r
    if soft:
        out += [
            "",
            "**Soft-label sets** (`mnist5k`; students trained by distillation from the "
            "teacher's logits; the random real subset gets the same kind of soft labels; "
            "each method's best recorded setting)",
            "",
            "| method | IPC | labels | accuracy | random + same labels |",
            "|---|---|---|---|---|",
        ]
        for (method, ipc), r in sorted(soft.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            res = r["eval"]["results"]
            out.append(
                f"| {method}{_options(r)} | {ipc} | {r['relabel']}{_recipe(r)} | "
                f"{_pm(res['synthetic'])} | {_pm(res['random'])} |"
            )
    return out


RECON_ORDER = ["minmax", "mse", "adaround", "brecq", "qdrop", "genie"]
RECON_LABEL = {
    "minmax": "range only, min/max",
    "mse": "range only, MSE",
    "adaround": "AdaRound (per layer)",
    "brecq": "BRECQ",
    "qdrop": "QDrop",
    "genie": "Genie-M",
}


def _calib_label(r: dict) -> str:
    name = r["calib_name"]
    m = re.match(r"^(genie|zeroq)_.+_(\d+)_it(\d+)$", name)  # bench/student.py's sets
    if m:
        kind, count, its = m.groups()
        return f"{'Genie' if kind == 'genie' else 'ZeroQ'} set, {count} images ({its} it)"
    m = re.match(r"^set_(\w+?)_ipc(\d+)$", name)  # bench/student.py's condensed sets
    if m:
        return f"{m.group(1)} set, IPC {m.group(2)}"
    if name.startswith("real"):
        return f"{name[4:]} real images"
    if name.startswith("noise"):
        return f"{name[5:]} noise images"
    return name


def _latest(runs: list[dict], *fields: str) -> dict[tuple, dict]:
    """The newest run of each combination of ``fields`` (a rerun replaces older files)."""
    out: dict[tuple, dict] = {}
    for r in sorted(runs, key=lambda r: r["date"]):
        out[tuple(r[f] for f in fields)] = r
    return out


def _recon_teacher(r: dict) -> str:
    """A reconstruction row's teacher: its name, fp32 accuracy and, where the run recorded
    it, its file's sha256 prefix (a retrained teacher keeps its name and may keep its
    accuracy)."""
    sha = f", {r['teacher_file'][:8]}" if r["teacher_file"] else ""
    return f"{r['teacher_name']} ({r['result']['fp32_accuracy']:.2f}{sha})"


def _with_teacher_file(runs: list[dict]) -> list[dict]:
    """``runs`` with ``teacher_file``: the teacher file's sha256, "" for runs made before
    the methods stage recorded it."""
    return [{**r, "teacher_file": r.get("teacher_sha256") or ""} for r in runs]


def recon_tables(results: list[dict]) -> list[str]:
    """Reconstruction PTQ against range-only PTQ, by calibration set and bit width."""
    every = _with_teacher_file([r for r in results if r.get("benchmark") == "reconstruction-ptq"])
    runs = [r for r in every if r.get("device", "cpu") == "cpu"]
    if not runs:
        return []
    latest = _latest(runs, "teacher_name", "teacher_file", "calib_name", "bits", "method")
    bits_order = {"w4a4": 0, "w3a3": 1, "w2a4": 2}
    keys = sorted(
        {k[:3] for k in latest}, key=lambda k: (k[0], k[1], not k[2].startswith("real"), k[2])
    )
    cols = sorted({k[3] for k in latest}, key=lambda b: bits_order.get(b, 9))
    out = []
    its = _one_of(r["settings"].get("iterations") for r in runs if "iterations" in r["settings"])
    out += [
        "",
        "**Reconstruction PTQ** (`bench/recon.py`; `mnist5k`, teacher's fp32 accuracy in "
        "brackets, and its file's sha256 prefix for runs that recorded it; test accuracy % "
        "of the quantized teacher; first and last layer at 8 bits, "
        "per-channel symmetric weights, per-tensor activations; reconstruction at "
        f"{its} steps per block (the papers' code: 20,000), every other setting the "
        "official code's; one seed; s/block = seconds per reconstructed block or layer "
        "(mean over the network, median over the bit widths) on the CPU, 1 thread, "
        "another benchmark on the other core)",
        "",
        "| teacher | calibration | method | " + " | ".join(cols) + " | s/block | peak RSS MiB |",
        "|---|---|---|" + "---|" * len(cols) + "---|---|",
    ]
    for teacher, tfile, calib in keys:
        for m in RECON_ORDER:
            cells, secs, rss = [], [], []
            for b in cols:
                r = latest.get((teacher, tfile, calib, b, m))
                if r is None:
                    cells.append("—")
                    continue
                cells.append(f"{r['result']['quant_accuracy']:.2f}")
                if r["seconds_per_block"] is not None:
                    secs.append(r["seconds_per_block"])
                rss.append(r["peak_rss_mib"])
            if all(c == "—" for c in cells):
                continue
            first = next(latest[(teacher, tfile, calib, b, m)] for b in cols
                         if (teacher, tfile, calib, b, m) in latest)  # fmt: skip
            sec = f"{statistics.median(secs):.1f}" if secs else "—"
            out.append(
                f"| {_recon_teacher(first)} | {_calib_label(first)} | "
                f"{RECON_LABEL[m]} | {' | '.join(cells)} | {sec} | "
                f"{max(rss):.0f} |"
            )
    return out + recon_gpu_table([r for r in every if r.get("device", "cpu") != "cpu"])


def recon_steps_table(results: list[dict]) -> list[str]:
    """``bench/recon.py --stage steps``: the same reconstruction at several step counts
    per block (the papers' 20,000 against the 1,000 of the methods table), one row per
    (teacher file, calibration, method, bits)."""
    runs = [r for r in results if r.get("benchmark") == "reconstruction-steps"]
    if not runs:
        return []
    latest = _latest(runs, "teacher_sha256", "calib_name", "method", "bits", "iterations",
                     "device")  # fmt: skip
    steps = sorted({r["iterations"] for r in latest.values()})
    rows: dict[tuple, dict[int, dict]] = {}
    for (sha, calib, method, bits, its, device), r in latest.items():
        rows.setdefault((r["teacher_name"], sha, calib, method, bits, device), {})[its] = r
    out = [
        "",
        "**Reconstruction at more steps per block** (`bench/recon.py --stage steps`; `mnist5k`, "
        "teacher's fp32 accuracy and file sha256 prefix in brackets; test accuracy % of the "
        "quantized teacher, first and last layer at 8 bits; in brackets the seconds per "
        "reconstructed block, 1 thread, another benchmark on the other core; one seed)",
        "",
        "| teacher | calibration | method | bits | "
        + " | ".join(f"{n:,} steps" for n in steps)
        + " |",
        "|---|---|---|---|" + "---|" * len(steps),
    ]

    def rank(calib: str) -> int:  # real images first, noise last
        return 0 if calib.startswith("real") else 2 if calib.startswith("noise") else 1

    for key in sorted(rows, key=lambda k: (k[0], k[1], rank(k[2]), k[2], k[3], k[4])):
        teacher, sha, _, method, bits, device = key
        by = rows[key]
        first = next(iter(by.values()))
        cells = [
            f"{by[n]['result']['quant_accuracy']:.2f} ({by[n]['seconds_per_block']:.0f} s)"
            if n in by
            else "—"
            for n in steps
        ]
        on = "" if device == "cpu" else f", on {device}"
        out.append(
            f"| {teacher} ({first['result']['fp32_accuracy']:.2f}, {sha[:8]}) | "
            f"{_calib_label(first)}{on} | {RECON_LABEL[method]} | {bits} | {' | '.join(cells)} |"
        )
    return out


ABLATION_ORDER = {  # bench/recon.py's ABLATION: (λ, weight steps) and the method it is
    "qdrop": ("0.01", "fixed", "QDrop"),
    "qdrop_steps": ("0.01", "learned", "—"),
    "qdrop_lambda1": ("1", "fixed", "—"),
    "genie": ("1", "learned", "Genie-M"),
}


def recon_ablation_table(results: list[dict]) -> list[str]:
    """``bench/recon.py --stage ablation``: QDrop to Genie-M one setting at a time, one
    row per (teacher file, calibration, bits, cell); its SQNR and agreement beside."""
    runs = [r for r in _on_cpu(results) if r.get("benchmark") == "reconstruction-ablation"]
    if not runs:
        return []
    latest = _latest(runs, "teacher_sha256", "calib_name", "bits", "variant", "iterations")
    its = _one_of(r["iterations"] for r in latest.values())
    out = [
        "",
        "**What lets Genie-M calibrate on noise** (`bench/recon.py --stage ablation`; "
        "`mnist5k`, teacher's fp32 accuracy and file sha256 prefix in brackets; QDrop and "
        "Genie-M differ in two settings, the rounding regulariser's λ and whether the "
        f"per-channel weight steps are learned: every cell of that grid, {its} steps per "
        "block, first and last layer at 8 bits, one seed; agrees = top-1 agreement % with "
        "the float network on the test set)",
        "",
        "| teacher | calibration | bits | λ | weight steps | is | accuracy % | agrees % | "
        "logit SQNR dB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(ABLATION_ORDER)

    def key(k: tuple) -> tuple:
        sha, calib, bits, variant, _ = k
        r = latest[k]
        return (r["teacher_name"], sha, not calib.startswith("real"), calib, bits,
                order.index(variant))  # fmt: skip

    for k in sorted(latest, key=key):
        r = latest[k]
        lam, steps, name = ABLATION_ORDER[r["variant"]]
        res = r["result"]
        out.append(
            f"| {r['teacher_name']} ({res['fp32_accuracy']:.2f}, {k[0][:8]}) | "
            f"{_calib_label(r)} | {r['bits']} | {lam} | {steps} | {name} | "
            f"{res['quant_accuracy']:.2f} | {res['agreement']:.1f} | {res['logit_sqnr_db']:.2f} |"
        )
    return out


def _on_cpu(results: list[dict]) -> list[dict]:
    """Results measured on the CPU (files without a device are CPU runs)."""
    return [r for r in results if r.get("device", "cpu") == "cpu"]


def recon_gpu_table(runs: list[dict]) -> list[str]:
    """Reconstruction on a GPU (``bench/recon.py --device cuda``): seconds per block and
    the quantized accuracy, per (teacher, calibration, bits, method, steps per block)."""
    if not runs:
        return []
    latest = _latest(runs, "teacher_name", "teacher_file", "calib_name", "bits", "method")
    rows = []
    for (_teacher, _file, _calib, bits, method), r in sorted(latest.items()):
        if r["seconds_per_block"] is None:
            continue
        rows.append(
            f"| {_recon_teacher(r)} | {_calib_label(r)} | {bits} | {RECON_LABEL[method]} | "
            f"{r['settings'].get('iterations')} | {r['seconds_per_block']:.2f} | "
            f"{r['result']['quant_accuracy']:.2f} |"
        )
    if not rows:
        return []
    return [
        "",
        "**Reconstruction on a GPU** (`bench/recon.py --device cuda`; seconds per block at "
        "the steps shown; the accuracy of the same run)",
        "",
        "| teacher | calibration | bits | method | steps/block | s/block | test % |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def mixed_tables(results: list[dict]) -> list[str]:
    """ZeroQ mixed precision and Polino's allocation against uniform weight bits."""
    runs = [r for r in _on_cpu(results) if r.get("benchmark") == "mixed-precision"]
    if not runs:
        return []
    latest = _latest(runs, "teacher_name", "calib_name", "run")
    rows = []
    for _, r in sorted(
        latest.items(),
        key=lambda kv: (kv[0][0], kv[0][1], -kv[1]["average_weight_bits"], kv[0][2]),  # fmt: skip
    ):
        s, mixed = r["settings"], r["result"].get("mixed_precision_result")
        if mixed is None:
            what = f"uniform {s['bits'][1]}-bit"
        elif mixed["method"] == "zeroq":
            what = f"ZeroQ mixed, target {mixed['target_average_bits']:g} bits"
            if mixed["bit_options"] != [2, 4, 8]:
                what += f" from {{{','.join(map(str, mixed['bit_options']))}}}"
        else:
            what = f"Polino's allocation from {round(mixed['target_average_bits'])} bits"
        counts: dict[int, int] = {}
        for b in (mixed or {}).get("bits", {}).values():
            counts[b] = counts.get(b, 0) + 1
        layers = ", ".join(f"{n}×{b}" for b, n in sorted(counts.items())) if counts else "—"
        rows.append(
            f"| {r['teacher_name']} ({r['result']['fp32_accuracy']:.2f}) | {_calib_label(r)} | "
            f"{what} | {r['average_weight_bits']:.3f} | {layers} | "
            f"{r['result']['quant_accuracy']:.2f} |"
        )
    return [
        "",
        "**Mixed-precision weights** (`bench/recon.py --stage mixed`; `mnist5k`, teacher's "
        "fp32 accuracy in brackets; weight bits of the layers between the first and the "
        "last (those two at 8), activations at 8 bits, MSE observer, no reconstruction; "
        "average bits weighted by each layer's weights; layers = how many layers got how "
        "many bits; the ResNet's frontier: [mixed_frontier_resnet.png](mixed_frontier_resnet.png))",
        "",
        "| teacher | calibration | weights | average bits | layers (count×bits) | accuracy % |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


FORMAT_LABEL = {
    "int8": "INT8 weights and activations",
    "fp8_e4m3": "FP8 E4M3 weights and activations",
    "fp8_e5m2": "FP8 E5M2 weights and activations",
    "int4": "INT4 weights, INT8 activations",
    "fp4_e2m1": "FP4 E2M1 weights (scale search), INT8 activations",
    "fp4_e2m1_nosearch": "FP4 E2M1 weights (max scaling), INT8 activations",
}


def format_tables(results: list[dict]) -> list[str]:
    """FP8 / FP4 fake quantization against integers of the same widths."""
    runs = [r for r in _on_cpu(results) if r.get("benchmark") == "number-formats"]
    if not runs:
        return []
    latest = _latest(runs, "teacher_name", "calib_name", "run")
    order = list(FORMAT_LABEL)
    rows = [
        f"| {r['teacher_name']} ({r['result']['fp32_accuracy']:.2f}) | {_calib_label(r)} | "
        f"{r['settings']['bits']} | {FORMAT_LABEL.get(run, run)} | "
        f"{r['result']['quant_accuracy']:.2f} | {r['result']['agreement']:.1f} |"
        for (_, _, run), r in sorted(
            latest.items(),
            key=lambda kv: (
                kv[0][:2],
                order.index(kv[0][2]) if kv[0][2] in order else 99,
            ),  # fmt: skip
        )
    ]
    return [
        "",
        "**Number formats** (`bench/recon.py --stage formats`; `mnist5k`, teacher's fp32 "
        "accuracy in brackets; the layers between the first and the last in the format named, "
        "those two INT8; per-channel weight scales, per-tensor activation scales, "
        "integers by the min/max observer, FP scales by LLM-FP4's search unless named; "
        "agrees = top-1 agreement % with the float network on the test set)",
        "",
        "| teacher | calibration | bits | format | test accuracy % | agrees % |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def ptq_headline(results: list[dict]) -> list[str]:
    """README: reconstruction against range-only PTQ from real images, by bit width."""
    runs = _with_teacher_file([r for r in _on_cpu(results) if r.get("benchmark") ==
                               "reconstruction-ptq" and r["calib_name"] == "real256"])  # fmt: skip
    if not runs:
        return []
    # one file per teacher name, its newest (a retrained teacher replaces the earlier one
    # here; docs/results.md keeps both)
    current = {r["teacher_name"]: r["teacher_file"] for r in sorted(runs, key=lambda r: r["date"])}
    runs = [r for r in runs if current[r["teacher_name"]] == r["teacher_file"]]
    latest = _latest(runs, "teacher_name", "bits", "method")
    methods = [m for m in RECON_ORDER if m != "mse" and any(k[2] == m for k in latest)]
    rows = []
    for teacher, bits in sorted({k[:2] for k in latest}, key=lambda k: (k[0], -int(k[1][1]))):
        cells = [
            f"{latest[(teacher, bits, m)]['result']['quant_accuracy']:.1f}"
            if (teacher, bits, m) in latest else "—"
            for m in methods
        ]  # fmt: skip
        acc = next(r for k, r in latest.items() if k[:2] == (teacher, bits))
        rows.append(f"| {_recon_teacher(acc)} | {bits} | " + " | ".join(cells) + " |")
    its = _one_of(r["settings"].get("iterations") for r in runs if "iterations" in r["settings"])
    calib = _one_of(_calib_label(r) for r in runs)
    return [
        "",
        f"**Post-training quantization of the teachers** (`mnist5k`, fp32 accuracy in "
        f"brackets; calibrated on {calib}; reconstruction at {its} steps per block; test "
        "accuracy %)",
        "",
        "| teacher | bits | " + " | ".join(RECON_LABEL[m].split(" (")[0] for m in methods) + " |",
        "|---|---|" + "---|" * len(methods),
        *rows,
    ]


def render_full(results: list[dict]) -> str:
    """docs/results.md: every table."""
    sections = [
        ("Coresets and matching generators", coreset_table(results)),
        ("", matching_speed_table(results) + matching_accuracy_table(results)),
        ("", official_accuracy_table(results) + seed_table(results)),
        ("Teacher-driven generators: calibration and soft labels", teacher_tables(results)),
        ("Students: distillation and quantization", student_tables(results)),
        ("", zeroshot_table(results) + student_set_table(results)),
        ("Reconstruction PTQ: AdaRound, BRECQ, QDrop, Genie-M", recon_tables(results)),
        (
            "",
            recon_steps_table(results)
            + recon_ablation_table(results)
            + mixed_tables(results)
            + format_tables(results),
        ),
        ("ONNX export: accuracy and CPU latency", onnx_tables(results)),
        ("kornia in the training pipelines", kornia_tables(results)),
        ("bfloat16 training", bf16_tables(results)),
        ("torchrun: several processes, the one-process result", torchrun_table(results)),
    ]
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python bench/make_table.py` from `bench/results/*.json` (result "
        f"schema version {SCHEMA_VERSION}); do not edit by hand. The README keeps the "
        "headline figures; each file records its date, machine and every setting.",
    ]
    for title, body in sections:
        body = body[1:] if body[:1] == [""] else body
        if body:
            lines += ["", f"## {title}"] if title else []
            lines += [""] + body
    return "\n".join(lines) + "\n"


def _strip(lines: list[str]) -> list[str]:
    """Without the leading blank line a table starts with when nothing comes before it."""
    return lines[1:] if lines[:1] == [""] else lines


def render_readme(results: list[dict]) -> dict[str, str]:
    """README.md's blocks, by name: each replaces <!-- NAME:start --> ... <!-- NAME:end -->."""
    return {
        "cost": "\n".join(cost_tables(results)) or "_No speed results yet._",
        "results": "\n".join(
            _strip(headline_tables(results) + student_headline(results) + ptq_headline(results))
        )
        or "_No benchmark results yet._",
    }


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    for name, body in blocks.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        text, n = re.subn(
            re.escape(start) + ".*?" + re.escape(end),
            lambda _, s=start, b=body, e=end: f"{s}\n{b}\n{e}",
            text,
            flags=re.S,
        )
        if n != 1:
            raise SystemExit(f"README.md needs exactly one {start} ... {end} block")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print", action="store_true", help="print; write nothing")
    args = ap.parse_args()
    results = load_results()
    blocks, full = render_readme(results), render_full(results)
    if args.print:
        print("\n\n".join([*blocks.values(), full]))
        return
    README.write_text(replace_blocks(README.read_text(), blocks))
    RESULTS_MD.parent.mkdir(exist_ok=True)
    RESULTS_MD.write_text(full)
    print(f"updated {README} and {RESULTS_MD}")


if __name__ == "__main__":
    main()
