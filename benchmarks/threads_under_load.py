"""Decoding and training speed with 1 thread, all threads, and hangpt's measured choice
(hangpt/threads.py), with OpenMP's default and passive wait policy, on the machine as it is and
with a bounded background load that this script starts and stops itself.

    python benchmarks/threads_under_load.py [--load 2] [--seconds 600]

Each setting runs in a fresh process (the OpenMP wait policy is read once, at start). Figures:
median ms per decoded token (tiny GPT, 64 greedy tokens, the C step and the PyTorch forward) and
median seconds per training step (batch 16 x 128). The last line compares the measured choice
("auto") with the best fixed count under load: ~1.0 means the policy finds the right count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS = {  # name -> environment of the worker
    "1 thread": {"HANGPT_THREADS": "1"},
    "all threads": {"HANGPT_THREADS": str(os.cpu_count() or 1)},
    "auto": {},
    "all+passive wait": {"HANGPT_THREADS": str(os.cpu_count() or 1), "OMP_WAIT_POLICY": "PASSIVE"},
    "auto+passive wait": {"OMP_WAIT_POLICY": "PASSIVE"},
}


class NoText:
    """Token ids only: the benchmark times the model, not detokenization."""

    @staticmethod
    def decode(ids):
        return ""


def worker() -> None:
    """One setting: print {"c_ms", "torch_ms", "train_s"} as JSON."""
    import torch
    import torch.nn.functional as F

    from hangpt.engine import Engine, GenerationConfig
    from hangpt.models import build_model, preset_config
    from hangpt.threads import ThreadPolicy

    torch.manual_seed(0)
    model = build_model(preset_config("tiny")).eval()
    out = {}
    config = GenerationConfig(max_new_tokens=64, eos_token_id=[])
    for name, fast in (("c_ms", True), ("torch_ms", False)):
        engine = Engine(model, NoText(), fast_decode=fast)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            engine.generate([[1, 2, 3, 4]], config)
            times.append((time.perf_counter() - t0) / 64 * 1000)
        out[name] = sorted(times[1:])[len(times[1:]) // 2]
    model.train()
    x = torch.randint(0, model.config.vocab_size, (16, 129))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    policy = ThreadPolicy(period=50, probe=2)  # as the training loop does
    times = []
    for _ in range(8):
        policy.before()
        t0 = time.perf_counter()
        F.cross_entropy(model(x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        policy.after(times[-1])
    out["train_s"] = sorted(times[1:])[len(times[1:]) // 2]
    out["threads_chosen"] = policy.best
    print(json.dumps(out))


def busy(seconds: float) -> subprocess.Popen:
    """A process that keeps one core busy for at most `seconds` (stopped earlier by the caller)."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def run_setting(env: dict) -> dict:
    result = subprocess.run([sys.executable, __file__, "--worker"], env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=900)
    if result.returncode:
        raise SystemExit(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--load", type=int, default=1, help="busy background processes in the loaded runs")
    parser.add_argument("--seconds", type=float, default=900, help="upper bound on the background load's life")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of: " + ", ".join(SETTINGS))
    args = parser.parse_args()
    if args.worker:
        return worker()
    rows = {}
    for loaded in (False, True):
        procs = [busy(args.seconds) for _ in range(args.load if loaded else 0)]
        try:
            for name in args.settings.split(","):
                rows[(name, loaded)] = run_setting(SETTINGS[name])
        finally:
            for p in procs:
                p.kill()
                p.wait()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end "
          f"(other users of the machine are not stopped: 'no extra load' is not idle)")
    print(f"{'setting':<20} {'extra load':>10} {'C ms/token':>11} {'torch ms/token':>15} {'train s/step':>13} {'threads':>8}")
    for (name, loaded), r in rows.items():
        print(f"{name:<20} {args.load if loaded else 0:>10} {r['c_ms']:>11.2f} {r['torch_ms']:>15.2f} "
              f"{r['train_s']:>13.3f} {r['threads_chosen']:>8}")
    summary = []
    for loaded in (False, True):
        if not all((n, loaded) in rows for n in ("1 thread", "all threads", "auto")):
            continue
        fixed = [rows[(n, loaded)] for n in ("1 thread", "all threads")]
        auto = rows[("auto", loaded)]
        tag = "load" if loaded else "noload"
        for key in ("c_ms", "torch_ms", "train_s"):
            summary.append(f"{tag}_{key.split('_')[0]}_auto_vs_best={auto[key] / min(f[key] for f in fixed):.2f}")
        summary.append(f"{tag}_c_all_vs_1={fixed[1]['c_ms'] / fixed[0]['c_ms']:.2f}")
    print("RESULT threads_under_load " + " ".join(summary))


if __name__ == "__main__":
    main()
