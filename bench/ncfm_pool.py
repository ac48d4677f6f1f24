"""Train NCFM's feature-extractor pool into its cache with several worker processes.

NCFM (``distill_data/synth/ncfm.py``) trains its pool of ``pool_size`` ConvNets on
first use, one after another; on a GPU each network's small batches leave the device
mostly idle, so workers that each train every W-th network fill the same cache faster.
Network i depends only on (seed, i), so the pool is the one a single process would
have trained. A later ``build --method ncfm`` (or bench/matching.py) finds it cached.

    python bench/ncfm_pool.py --device cuda --workers 4
    python bench/ncfm_pool.py --set pool_size=2 --set pretrain_epochs=2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill_data.config import make_config, parse_set_options  # noqa: E402
from distill_data.data import load_dataset  # noqa: E402
from distill_data.synth import GENERATORS  # noqa: E402
from distill_data.synth.ncfm import feature_pool  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="the build seed the pool is for")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = make_config(GENERATORS.get("ncfm").Config, parse_set_options(args.sets))
    if args.worker is None:
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--dataset", args.dataset, "--device", args.device]
        cmd += ["--workers", str(args.workers), "--seed", str(args.seed)]
        cmd += [f"--set={s}" for s in args.sets]
        procs = [subprocess.Popen([*cmd, "--worker", str(w)]) for w in range(args.workers)]
        failed = [p.args[-1] for p in procs if p.wait() != 0]
        if failed:
            sys.exit(f"ncfm_pool: worker(s) {', '.join(failed)} failed")
        print(
            f"ncfm pool of {cfg.pool_size} x {cfg.pretrain_epochs} epochs on {args.device}: "
            f"{time.perf_counter() - t0:.0f} s with {args.workers} workers",
            flush=True,
        )
        return
    data = load_dataset(args.dataset)
    members = range(args.worker, cfg.pool_size, args.workers)
    feature_pool(cfg, data, args.seed, args.device, quiet=True, members=members)


if __name__ == "__main__":
    main()
