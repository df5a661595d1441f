#!/usr/bin/env python3
"""Lines up slow proxy answers with what each vigie thread did at the time.

While an open-loop run is going, sample every thread's /proc/PID/task/TID/schedstat
(CPU time and run-queue wait, ns) every 10 ms; afterwards, read the slow answers
that `OPENLOOP_SLOW_US=N benches/openloop.rs` printed on stderr and print, per
100 ms window, how many answers were slow next to each thread's CPU and wait time.

    benches/tail-windows.py sample PID SECONDS OUT      # during the run
    benches/tail-windows.py report OUT SLOW_FILE        # afterwards
"""
import collections
import os
import re
import sys
import time


def sample(pid, secs, out):
    tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    names = [open(f"/proc/{pid}/task/{t}/comm").read().strip().replace(" ", "_") for t in tids]
    end = time.monotonic() + secs
    with open(out, "w") as f:
        f.write("# " + " ".join(f"{t}:{n}" for t, n in zip(tids, names)) + "\n")
        while time.monotonic() < end:
            vals = []
            for t in tids:
                try:
                    run, wait, _ = open(f"/proc/{pid}/task/{t}/schedstat").read().split()
                except OSError:
                    run = wait = "0"
                vals.append(f"{run},{wait}")
            f.write(f"{time.monotonic():.4f} " + " ".join(vals) + "\n")
            time.sleep(0.01)


def report(samples, slow_file):
    lines = open(samples).read().splitlines()
    header = lines[0][2:].split()
    rows = []
    for line in lines[1:]:
        parts = line.split()
        rows.append((float(parts[0]), [tuple(map(int, p.split(","))) for p in parts[1:]]))
    slow_lines = open(slow_file).read().splitlines()
    m = re.search(r"tv_sec: (\d+), tv_nsec: (\d+)", slow_lines[0])
    if not m:
        sys.exit(f"{slow_file}:1: no 'slow start Instant {{ … }}' line")
    start = int(m.group(1)) + int(m.group(2)) / 1e9
    slow = collections.Counter()
    for line in slow_lines[1:]:
        _, due_ms, _ = line.split()
        slow[int(float(due_ms) / 100)] += 1
    windows = collections.defaultdict(lambda: [[0, 0] for _ in header])
    for (t0, v0), (_, v1) in zip(rows, rows[1:]):
        w = int((t0 - start) * 10)
        for k in range(len(header)):
            windows[w][k][0] += v1[k][0] - v0[k][0]
            windows[w][k][1] += v1[k][1] - v0[k][1]
    print("window ms  slow | " + " | ".join(f"{h} cpu/wait ms" for h in header))
    for w in sorted(windows):
        if w < 0 or w > max(slow, default=0):
            continue
        cells = " | ".join(f"{c / 1e6:5.1f} / {q / 1e6:4.1f}" for c, q in windows[w])
        print(f"{w * 100:9d} {slow[w]:5d} | {cells}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "sample":
        sample(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 4 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
