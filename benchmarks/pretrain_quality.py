"""Pretraining quality per minute: validation bits per byte after a fixed time, 2019 recipe vs today's defaults.

Three recipes: `old` (the 2019 recipe: GPT-2 layout, AdamW, cosine), `llama` (the same with the
Llama layout at the same parameter count: the architecture alone) and `new` (today's defaults:
Llama layout, Muon, linear decay to zero). Each recipe pretrains `--preset tiny` on the Korean texts + NSMC training reviews for exactly
`--minutes` of training (the `--time-budget`; tokenizing and validation are not counted), each
with `--seeds` seeds. Every run holds out the same documents (every 50th) and scores the same
validation tokens. All runs start at the same moment with one thread each (HANGPT_THREADS=1), so
on a machine that other work shares they all see the same load; `tokens` and `steps` show how much
CPU each got. With `--one-at-a-time` the runs go one after another with the machine's default
threads instead, seed by seed and recipe by recipe: the 10 minutes a user's own run gets on an
otherwise idle machine. The tokenizer is trained once, exactly as `hangpt pretrain` would, and shared.

    python benchmarks/pretrain_quality.py [--data-dir ../shared/data] [--minutes 10] [--seeds 2]
        [--eval-every 25] [--plot docs/img/pretrain_quality.png] [--out DIR] [--recipes old llama new]
        [--one-at-a-time]

The plot is validation bits per byte against minutes of training, from each run's train_log.jsonl.
Last line: RESULT pretrain_quality old_bpb=... llama_bpb=... new_bpb=... (means over the seeds) target_bpb=1.85
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from hangpt.train.pretrain import _corpus_tokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RECIPES = {
    "old": ["--arch", "gpt2", "--optimizer", "adamw", "--lr-schedule", "cosine", "--lr", "1e-3"],  # the 2019 recipe
    "llama": ["--arch", "llama", "--optimizer", "adamw", "--lr-schedule", "cosine", "--lr", "1e-3"],  # layout only
    "new": [],  # `hangpt pretrain --preset tiny`'s defaults
}
LABELS = {"old": "2019 recipe: GPT-2 layout, AdamW, cosine", "llama": "Llama layout, AdamW, cosine",
          "new": "new defaults: Llama layout, Muon, linear to 0"}
TARGET = 1.85


def launch(name: str, flags: list[str], seed: int, files: list[Path], tokenizer: Path, out: Path, minutes: float,
           eval_every: int, one_thread: bool):
    cmd = [sys.executable, "-m", "hangpt", "pretrain", "--data", *map(str, files), "--text-column", "document",
           "--preset", "tiny", "--tokenizer", str(tokenizer), "--time-budget", str(minutes), "--seed", str(seed),
           "--eval-every", str(eval_every), "--save-every", "100000", "--out", str(out / f"{name}-{seed}"), "--overwrite",
           "--no-progress", "--json", *flags]
    log = open(out / f"{name}-{seed}.log", "w")
    threads = {"HANGPT_THREADS": "1", "OMP_NUM_THREADS": "1"} if one_thread else {}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, **threads})


def curve(folder: Path) -> list[tuple[float, float]]:
    """(minutes, validation bits per byte) of every validation in a run's log."""
    rows = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [(r["minutes"], r["val_bpb"]) for r in rows if "val_bpb" in r]


def plot(curves: dict[str, list[list[tuple[float, float]]]], path: Path, minutes: float, how: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    colors = {"old": "tab:gray", "llama": "tab:orange", "new": "tab:blue"}
    for name, runs in curves.items():
        color = colors[name]
        for i, points in enumerate(runs):
            ax.plot(*zip(*points), "o-", color=color, markersize=2.5, linewidth=1.2, alpha=0.9,
                    label=LABELS[name] if i == 0 else None)
    ax.axhline(TARGET, color="tab:red", linestyle=":", linewidth=1, label=f"{TARGET} bits per byte")
    ax.set_xlabel(f"minutes of training ({how})")
    ax.set_ylabel("validation bits per byte")
    ax.set_xlim(0, minutes * 1.1)
    ax.set_title(f"hangpt pretrain --preset tiny, Korean texts + NSMC reviews, {minutes:g} min")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=25, help="steps between validations (points of the curve)")
    ap.add_argument("--plot", type=Path, default=None, help="write the bits-per-byte curves to this PNG")
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES),
                    help="old: the 2019 recipe; llama: the same with the Llama layout; new: today's defaults")
    ap.add_argument("--one-at-a-time", action="store_true",
                    help="run one after another with default threads (default: side by side, 1 thread each)")
    args = ap.parse_args()
    how = "one run at a time, default threads" if args.one_at_a_time else "1 thread each, runs side by side"
    files = [args.data_dir / "korean_text", args.data_dir / "nsmc" / "ratings_train.txt.gz"]
    with tempfile.TemporaryDirectory(prefix="hangpt-quality-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        _corpus_tokenizer(files, out / "data", 8192, 0.02, "document")
        tokenizer = next((out / "data").glob("tokenizer-*"))
        print(f"{len(args.recipes) * args.seeds} runs of {args.minutes:g} min, {how}; "
              f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
        runs = [(name, seed) for seed in range(1, args.seeds + 1) for name in RECIPES if name in args.recipes]

        def start(name: str, seed: int):
            return launch(name, RECIPES[name], seed, files, tokenizer, out, args.minutes, args.eval_every,
                          one_thread=not args.one_at_a_time)

        def finish(key, proc) -> dict:
            stdout, _ = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"{key}: exit {proc.returncode}; see {out}/{key[0]}-{key[1]}.log")
            return json.loads(stdout)

        if args.one_at_a_time:
            results = {key: finish(key, start(*key)) for key in runs}
        else:
            procs = {key: start(*key) for key in runs}
            results = {key: finish(key, proc) for key, proc in procs.items()}
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        print(f"{'recipe':<6} {'seed':>4} {'steps':>6} {'tokens':>9} {'minutes':>8} {'val bpb':>8}")
        for (name, seed), r in results.items():
            print(f"{name:<6} {seed:>4} {r['steps']:>6} {r['tokens']:>9,} {r['minutes']:>8.2f} {r['final']['val_bpb']:>8.4f}")
        mean = {name: statistics.mean(r["final"]["val_bpb"] for (n, _), r in results.items() if n == name)
                for name in args.recipes}
        if args.plot:
            plot({name: [curve(out / f"{name}-{seed}") for seed in range(1, args.seeds + 1)] for name in args.recipes},
                 args.plot, args.minutes, how)
            print(f"plot: {args.plot}")
    shown = " ".join(f"{name}_bpb={bpb:.3f}" for name, bpb in mean.items())
    print(f"RESULT pretrain_quality {shown} target_bpb={TARGET} minutes={args.minutes:g}")


if __name__ == "__main__":
    main()
