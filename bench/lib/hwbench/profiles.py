"""Where a server's CPU goes during a fixed-rate run (`bench/run --perf`).

Two looks, one per round, because each disturbs the other:
- round 1: `perf record -e cpu-clock -g` (software clock sampling; this VM exposes no hardware
  counters), reported as the hottest symbols, kernel ([k]) and user ([.]);
- round 2: `perf trace -s`, the system calls each server makes, counted per transaction.
The CPU figures of runs profiled this way are disturbed, so `--perf` writes only the profile.
"""

import os
import re
import signal
import subprocess
import time

TOP = 30
SYMBOL = re.compile(r"^\s*([\d.]+)%\s+(\[[k.]\])\s+(.+?)\s*$")
# perf trace -s:  "   recvmmsg   1234   0   0.003 ..."
SYSCALL = re.compile(r"^\s+([a-z_0-9]+)\s+(\d+)\s+(\d+)\s+[\d.]+")


class Recorder:
    """Attached to the server's processes for one run; `mode` is "record" or "trace"."""

    def __init__(self, pids, run_dir, mode):
        self.mode = mode
        self.dir = run_dir
        self.data = os.path.join(run_dir, "perf.data")
        self.out = os.path.join(run_dir, "perf-%s.txt" % mode)
        pid_list = ",".join(str(p) for p in pids)
        if mode == "record":
            argv = ["perf", "record", "-q", "-e", "cpu-clock", "-g", "-p", pid_list,
                    "-o", self.data]
        else:
            argv = ["perf", "trace", "-s", "-p", pid_list, "-o", self.out]
        self.err = open(os.path.join(run_dir, "perf-%s.err" % mode), "w")
        self.proc = subprocess.Popen(argv, stdout=self.err, stderr=self.err,
                                     start_new_session=True)
        time.sleep(0.3)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def report(self):
        """The parsed figures: symbols with their share, or system calls with their counts."""
        if self.mode == "record":
            if not os.path.exists(self.data):
                return {"mode": "record", "error": "perf wrote no data"}
            text = subprocess.run(
                ["perf", "report", "-i", self.data, "--stdio", "--no-children",
                 "--sort", "sym", "-g", "none", "--percent-limit", "0.3"],
                capture_output=True, text=True, timeout=300).stdout
            syms = []
            for line in text.splitlines():
                m = SYMBOL.match(line)
                if m:
                    syms.append((float(m.group(1)), m.group(2), m.group(3)))
            kernel = sum(p for p, k, _ in syms if k == "[k]")
            samples = re.search(r"# Samples: (\S+)", text)
            return {"mode": "record", "symbols": syms, "kernel_pct_listed": round(kernel, 1),
                    "samples": samples.group(1) if samples else "?"}
        calls = {}
        try:
            with open(self.out) as f:
                for line in f:
                    m = SYSCALL.match(line)
                    if m and m.group(1) not in ("syscall",):
                        calls[m.group(1)] = calls.get(m.group(1), 0) + int(m.group(2))
        except OSError:
            return {"mode": "trace", "error": "perf trace wrote nothing"}
        return {"mode": "trace", "calls": calls}


def write(path, scen, fixed, command):
    """The profile file: per server, system calls per transaction and the hottest symbols."""
    lines = ["Profile of the %s scenario at %d/s (`%s`)." % (scen.key, fixed["rate"], command),
             "Written by bench/lib/hwbench/profiles.py; see its docstring for the method.", ""]
    for key, profs in fixed.get("_profiles", {}).items():
        ok = [r["successful"] for r in fixed["runs"][key]]
        lines.append("== %s ==" % key)
        for i, p in enumerate(profs):
            done = ok[i] if i < len(ok) else 0
            if p.get("error"):
                lines.append("  %s: %s" % (p["mode"], p["error"]))
                continue
            if p["mode"] == "trace":
                lines.append("  system calls per %s (%d %s, perf trace -s):" % (
                    scen.unit.rstrip("s"), done, scen.unit))
                total = 0.0
                for name, n in sorted(p["calls"].items(), key=lambda x: -x[1]):
                    per = n / done if done else 0
                    total += per
                    if per >= 0.01:
                        lines.append("    %-20s %8.2f" % (name, per))
                lines.append("    %-20s %8.2f" % ("all", total))
            else:
                lines.append("  hottest symbols (perf record -e cpu-clock -g, %s samples; "
                             "[k] kernel, [.] user; listed kernel share %.1f%%):" % (
                                 p["samples"], p["kernel_pct_listed"]))
                for pct, kind, sym in p["symbols"][:TOP]:
                    lines.append("    %6.2f%%  %s %s" % (pct, kind, sym[:90]))
            lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
