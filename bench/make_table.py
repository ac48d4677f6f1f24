"""Regenerate the README's results tables from bench/results/*.json (never typed by hand).

python bench/make_table.py          # rewrites the block between the markers in README.md
python bench/make_table.py --print  # prints it instead
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent
README = ROOT.parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _acc(r: dict) -> str:
    a = r["accuracy"]
    return f"{a['mean']:.2f} ± {a['std']:.2f}"


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


def render() -> str:
    results = [json.loads(p.read_text()) for p in sorted((ROOT / "results").glob("*.json"))]
    lines = coreset_table(results)
    return "\n".join(lines) if lines else "_No benchmark results yet._"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print", action="store_true")
    args = ap.parse_args()
    table = render()
    if args.print:
        print(table)
        return
    text = README.read_text()
    block = f"{START}\n{table}\n{END}"
    new, n = re.subn(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    if n != 1:
        raise SystemExit(f"README.md needs exactly one {START} ... {END} block")
    README.write_text(new)
    print(f"updated {README}")


if __name__ == "__main__":
    main()
