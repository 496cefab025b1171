"""The demo's result on the machine as it is and with busy background processes: since every stage
does a fixed number of steps, the figures should match and only the wall time differ.

    python benchmarks/demo_quality.py [--load 2] [--out runs/demo_quality] [-- extra demo flags]

Runs `hangpt demo --no-serve` twice (the second time with `--load` processes that each keep a core
busy, started here and stopped when the demo ends, never living longer than --max-minutes), then
prints the figures side by side (wall time, steps per stage, distinct greedy answers to the held-out
prompts, answers with U+FFFD, answers on topic, held-out reward) and the PPO chatbot's answers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROWS = [("wall time (min)", "wall_minutes"), ("expected (min)", "expected_minutes"),
        *[(f"{s} steps", f"{s}_steps") for s in ("pretrain", "sft", "rm", "dpo", "ppo")],
        *[(f"{p} {what}", f"{p}_{key}") for p in ("sft", "dpo", "ppo")
          for what, key in (("distinct answers", "distinct_answers"), ("answers with U+FFFD", "replacement_chars"),
                            ("on topic", "on_topic"), ("held-out reward", "heldout_reward"))]]


def busy(minutes: float) -> subprocess.Popen:
    code = f"import time\nend = time.time() + {minutes * 60}\nwhile time.time() < end: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def run_demo(out: Path, extra: list[str], load: int, max_minutes: float) -> dict:
    procs = [busy(max_minutes) for _ in range(load)]
    try:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "hangpt", "demo", "--no-serve", "--no-progress", "--json", "--out", str(out), *extra]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=max_minutes * 60)
        wall = (time.perf_counter() - t0) / 60
    finally:
        for p in procs:
            p.kill()
            p.wait()
    if result.returncode:
        raise SystemExit(result.stderr[-2000:])
    figures = json.loads(result.stdout.strip().splitlines()[-1])["figures"]
    figures["wall_minutes"] = round(wall, 1)
    figures["answers"] = json.loads((out / "answers.json").read_text(encoding="utf-8"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", type=int, default=2, help="busy background processes in the second run")
    parser.add_argument("--out", default="runs/demo_quality")
    parser.add_argument("--max-minutes", type=float, default=40, help="stop a run (and its load) after this long")
    parser.add_argument("extra", nargs="*", help="more `hangpt demo` flags, after --")
    args = parser.parse_args()
    runs = {}
    for load in (0, args.load):
        runs[load] = run_demo(Path(args.out) / f"load{load}", args.extra, load, args.max_minutes)
    print("(the machine's other users are not stopped: 'no extra load' is not an idle machine)")
    print(f"{'figure':<28}" + "".join(f"{f'{n} busy processes':>20}" for n in runs))
    for label, key in ROWS:
        cells = [runs[n].get(key) for n in runs]
        print(f"{label:<28}" + "".join(f"{'-' if v is None else (f'{v:.3g}' if isinstance(v, float) else v):>20}"
                                       for v in cells))
    for n, fig in runs.items():
        print(f"\nPPO answers with {n} busy background processes:")
        for s in fig["answers"][:10]:
            print(f"  {s['prompt']} -> {s['answers']['ppo']}")
    a, b = runs[0], runs[args.load]
    print(f"RESULT demo_quality idle_minutes={a['wall_minutes']} load_minutes={b['wall_minutes']} "
          f"idle_distinct={a['ppo_distinct_answers']} load_distinct={b['ppo_distinct_answers']} "
          f"idle_on_topic={a['ppo_on_topic']} load_on_topic={b['ppo_on_topic']} "
          f"idle_fffd={a['ppo_replacement_chars']} load_fffd={b['ppo_replacement_chars']} "
          f"prompts={a['heldout_prompts']}")


if __name__ == "__main__":
    main()
