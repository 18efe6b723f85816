"""Training steps at 1 and 2 threads, with libgomp's default spin-wait and with edgepipe's bound on it
(``GOMP_SPINCOUNT``, see ``pipeline.measure.openmp.bound_openmp_spin``), on a quiet machine and with busy
processes beside it.

    python bench/openmp_spin.py [--steps 60] [--rounds 2] [--busy 2] [--spin 10000 100000]

Each setting runs in a fresh process (libgomp reads its environment once), ``--rounds`` times, interleaved: a
student-cnn step (batch 128, 1×28×28, AdamW) after 5 warm-up steps; the figure is the median ms/step over rounds
and its ratio to 1 thread in the same condition. ``--busy N`` adds N processes that spin a core each. The CPU
flags and the load average before and after each condition are printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from pipeline.environment import cpu_facts
from pipeline.measure.openmp import OPENMP_SPIN_COUNT

STEP = """
import sys, time, torch, torch.nn.functional as F
from pipeline.training.models import build_model
torch.set_num_threads(int(sys.argv[1])); torch.manual_seed(0)
model = build_model("student-cnn", 1, 10, {}); optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
def step():
    optimizer.zero_grad(); F.cross_entropy(model(x), y).backward(); optimizer.step()
for _ in range(5): step()
start = time.perf_counter()
for _ in range(int(sys.argv[2])): step()
print((time.perf_counter() - start) / int(sys.argv[2]) * 1000)
"""


def settings(spins: list[str]) -> dict[str, tuple[int, dict[str, str]]]:
    """name: (threads, environment changes)."""
    bounded = {f"2 threads, GOMP_SPINCOUNT={spin}": (2, {"GOMP_SPINCOUNT": spin}) for spin in spins}
    return {"1 thread": (1, {}), "2 threads, libgomp default spin": (2, {}), **bounded}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").is_file() else "unknown"


def step_ms(threads: int, env: dict[str, str], steps: int) -> float:
    environment = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run(
        [sys.executable, "-c", STEP, str(threads), str(steps)],
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def condition(name: str, busy: int, steps: int, rounds: int, spins: list[str]) -> None:
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        before = load_average()
        tried = settings(spins)
        times: dict[str, list[float]] = {setting: [] for setting in tried}
        for _ in range(rounds):
            for setting, (threads, env) in tried.items():
                times[setting].append(step_ms(threads, env, steps))
        after = load_average()
    finally:
        for burner in burners:
            burner.kill()
    one = statistics.median(times["1 thread"])
    print(f"\n{name} ({busy} spinning processes beside it; load average {before} before, {after} after)")
    print("| setting | ms/step (median) | × 1 thread |\n|---|---|---|")
    for setting, values in times.items():
        print(f"| {setting} | {statistics.median(values):.1f} | {statistics.median(values) / one:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--busy", type=int, default=2, help="spinning processes in the busy condition")
    parser.add_argument("--spin", nargs="+", default=[OPENMP_SPIN_COUNT], help="GOMP_SPINCOUNT values to try")
    args = parser.parse_args()
    cpu = cpu_facts()
    print(f"machine: {cpu.get('model')}, {os.cpu_count()} cores, AVX2 {cpu.get('avx2')}, AVX-512 {cpu.get('avx512')}")
    condition("quiet", 0, args.steps, args.rounds, args.spin)
    condition("busy", args.busy, args.steps, args.rounds, args.spin)


if __name__ == "__main__":
    main()
