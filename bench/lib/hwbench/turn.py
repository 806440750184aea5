"""bench/turn: the TURN server's relaying cost, against coturn.

The same load (bench/rtpload's `turn` mode: N allocations from one user with long-term
credentials, each with a channel bound to a peer socket; each direction PPS packets a second
of 172-byte PCMU RTP, as ChannelData from the client and plain datagrams from the peer) goes
through each server in turn, the server pinned to CPU 0 and the load to CPU 1:
  - hedgewitch, TURN on UDP 127.0.0.1 (peers on loopback allowed for the run);
  - coturn (Debian's `turnserver`, one relay thread, --allow-loopback-peers), the same user.
For each, the packets delivered to the generator during the measured window (both ways)
and the server's CPU time (utime + stime, all threads) over that window give relayed
packets per CPU-second.
"""

import argparse
import datetime
import json
import os
import shutil
import time

from . import procs
from .relay import build_rtpload, log, write_section
from .report import _median as median
from .main import REPO, build, git_rev, machine_info
from .servers import BENCH_DIR, ServerError, taskset

START = "<!-- turn:start -->"
END = "<!-- turn:end -->"
SERVER_CPU = 0
LOAD_CPU = 1
TURN_PORT = 23478
GEN_BASE = 44000
RELAY_PORTS = (30000, 39999)
REALM = "bench.test"
USER = ("turnbench", "turn-Bench-pw1")
SYSTEMS = ("hedgewitch", "coturn")
LABELS = {"hedgewitch": "hedgewitch TURN", "coturn": "coturn (turnserver)"}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/turn", description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=500, help="allocations; default 500")
    p.add_argument("--pps", type=int, default=50,
                   help="packets a second per direction per allocation; default 50 (20 ms)")
    p.add_argument("--secs", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--rounds", type=int, default=3, help="runs of each server")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--no-write", action="store_true",
                   help="leave BENCHMARKS.md and bench/results/turn.json alone")
    return p.parse_args(argv)


def ensure_packages(workroot):
    need = [pkg for tool, pkg in (("turnserver", "coturn"), ("taskset", "util-linux"))
            if not shutil.which(tool)]
    if not need:
        return
    log("installing %s from Debian's packages ..." % " ".join(need))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # coturn comes with a service: it must not start (a policy-rc.d refusing every start).
    guard = "/usr/sbin/policy-rc.d"
    made = not os.path.exists(guard)
    if made:
        with open(guard, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(guard, 0o755)
    try:
        for argv in (["apt-get", "update"],
                     ["apt-get", "install", "-y", "--no-install-recommends"] + need):
            st, _, err = procs.run("apt-get", argv, workroot, 1800, env=env)
            if st != 0:
                raise SystemExit("%s failed (%s):\n%s" % (" ".join(argv), st, err[-3000:]))
    finally:
        if made:
            os.remove(guard)


class HedgewitchTurn:
    key = "hedgewitch"

    def __init__(self, binary):
        self.binary = binary
        self.proc = None

    def start(self, run_dir):
        data = os.path.join(run_dir, "data")
        cfg = os.path.join(run_dir, "hedgewitch.toml")
        with open(cfg, "w") as f:
            f.write('domain = "%s"\ndata_dir = "%s"\nlisten = ["udp:127.0.0.1:25060"]\n'
                    'stun = []\nlog = "warn"\n\n[relay]\nmode = "never"\nports = "%d-%d"\n\n'
                    '[turn]\nlisten = ["udp:127.0.0.1:%d"]\nallowed_peers = ["127.0.0.0/8"]\n'
                    'allocations_per_user = 100000\nmax_allocations = 100000\nbandwidth_per_user = 0\n\n'
                    '[security]\ntrusted = ["127.0.0.0/8"]\n'
                    % (REALM, data, RELAY_PORTS[0], RELAY_PORTS[1], TURN_PORT))
        st, out, err = procs.run("hedgewitch-user", [self.binary, "-c", cfg, "user", "add", USER[0],
                                                     "--password-stdin"], run_dir, 60,
                                 stdin_data=USER[1] + "\n")
        if st != 0:
            raise ServerError("hedgewitch user add failed (%s): %s%s" % (st, out, err))
        env = dict(os.environ, NO_COLOR="1")
        env.pop("RUST_LOG", None)
        self.proc = procs.Proc("hedgewitch", taskset(SERVER_CPU) + [self.binary, "-c", cfg, "serve"],
                               run_dir, env=env)
        if not procs.wait_until(lambda: procs.udp_port_bound(TURN_PORT), 20):
            raise ServerError("hedgewitch did not bind its TURN port")

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        if self.proc:
            self.proc.stop(grace=5.0)


class Coturn:
    key = "coturn"

    def __init__(self):
        self.proc = None

    def start(self, run_dir):
        self.proc = procs.Proc("coturn", taskset(SERVER_CPU) + [
            "turnserver", "-n", "--no-tls", "--no-dtls", "--no-cli", "-L", "127.0.0.1",
            "--listening-port", TURN_PORT, "-r", REALM, "-a", "-u", "%s:%s" % USER,
            "--allow-loopback-peers", "--min-port", RELAY_PORTS[0], "--max-port", RELAY_PORTS[1],
            "--relay-threads", "1", "--userdb", os.path.join(run_dir, "turndb"),
            "--log-file", "stdout", "--simple-log", "--no-stun-backward-compatibility"], run_dir)
        if not procs.wait_until(lambda: procs.udp_port_bound(TURN_PORT), 20):
            raise ServerError("coturn did not bind its port")

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        if self.proc:
            self.proc.stop(grace=5.0)


def measure(server, rtpload, run_dir, args):
    os.makedirs(run_dir, exist_ok=True)
    try:
        server.start(run_dir)
        gen = procs.Proc("rtpload", taskset(LOAD_CPU) + [
            rtpload, "turn", TURN_PORT, USER[0], USER[1], args.streams, GEN_BASE, args.pps,
            args.secs, args.warmup], run_dir)

        def ready():
            if gen.poll() is not None:
                raise ServerError("rtpload ended during set-up: %s" % open(gen.err_path).read()[-500:])
            return "ready" in open(gen.err_path).read()

        if not procs.wait_until(ready, 120):
            raise ServerError("the allocations were not made within 120 s")
        time.sleep(args.warmup)
        t0, c0 = time.monotonic(), procs.cpu_ticks(server.pids())
        time.sleep(args.secs)
        t1, c1 = time.monotonic(), procs.cpu_ticks(server.pids())
        st = gen.wait(args.secs + 30)
        if st != 0:
            raise ServerError("rtpload failed (%s): %s" % (st, gen.tail(10)))
        with open(gen.out_path) as f:
            load = json.loads(f.read().strip().splitlines()[-1])
    finally:
        server.stop()
    hz = os.sysconf("SC_CLK_TCK")
    cpu_s = (c1 - c0) / hz
    wall = t1 - t0
    return {
        "streams": load["streams"], "sent": load["sent"], "received": load["received"],
        "streams_both_ways": load["streams_both_ways"], "cpu_seconds": cpu_s, "wall_seconds": wall,
        "cpu_percent": 100.0 * cpu_s / wall if wall else 0.0,
        "relayed_per_cpu_second": load["received"] / cpu_s if cpu_s > 0 else None,
        "loss_percent": max(0.0, 100.0 * (1 - load["received"] / load["sent"]))
        if load["sent"] else None,
    }


def section(res, args, command):
    rows = {k: res["runs"][k] for k in SYSTEMS}
    med = {k: median([r["relayed_per_cpu_second"] for r in rows[k]]) for k in SYSTEMS}
    cpu = {k: median([r["cpu_percent"] for r in rows[k]]) for k in SYSTEMS}
    loss = {k: median([r["loss_percent"] for r in rows[k]]) for k in SYSTEMS}
    offered = args.streams * args.pps * 2
    out = [START, "## TURN: packets relayed per CPU-second", "",
           "`%s` at %s (%s, %s CPUs, kernel %s), %s." % (
               command, res["git"], res["machine"]["cpu_model"], res["machine"]["nproc"],
               res["machine"]["kernel"], res["date"]), "",
           "%d allocations of one user (long-term credentials), each with a channel bound to a "
           "peer; each direction %d packets/s of 172-byte PCMU RTP (ChannelData from the client, "
           "plain datagrams from the peer): %s packets/s offered, measured over %g s after %g s "
           "of warm-up; median of %d runs each, server on CPU 0, load (bench/rtpload `turn`) on "
           "CPU 1. CPU is the server process's utime + stime (all threads)." % (
               args.streams, args.pps, "{:,}".format(offered), args.secs, args.warmup,
               args.rounds), "",
           "| server | packets relayed per CPU-second | CPU (% of one core) | loss | vs coturn |",
           "|---|---:|---:|---:|---:|"]
    for k in SYSTEMS:
        ratio = "%.2f×" % (med[k] / med["coturn"]) if med[k] and med["coturn"] else "–"
        out.append("| %s | %s | %.1f | %.2f%% | %s |" % (
            LABELS[k], "{:,.0f}".format(med[k]) if med[k] else "–", cpu[k] or 0, loss[k] or 0,
            ratio))
    out += ["", "Every run (packets/CPU-second): " + "; ".join(
        "%s %s" % (LABELS[k], ", ".join("{:,.0f}".format(r["relayed_per_cpu_second"] or 0)
                                        for r in rows[k])) for k in SYSTEMS) + ".", "",
            "Target (issue 14): at least coturn's figure.", END]
    return "\n".join(out) + "\n"


def main(argv):
    args = parse_args(argv)
    procs.install_signal_handlers()
    workroot = os.path.join("/tmp/hwbench-turn", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    os.makedirs(workroot)
    ensure_packages(workroot)
    binary = build(log, workroot, args.no_build)
    rtpload = build_rtpload(workroot, args.no_build)
    servers = {"hedgewitch": HedgewitchTurn(binary), "coturn": Coturn()}
    runs = {k: [] for k in SYSTEMS}
    try:
        for r in range(args.rounds):
            order = SYSTEMS[r % 2:] + SYSTEMS[:r % 2]
            for k in order:
                log("round %d: %s ..." % (r + 1, LABELS[k]))
                res = measure(servers[k], rtpload, os.path.join(workroot, "%s-%d" % (k, r)), args)
                log("  %s packets/CPU-s, CPU %.0f%%, loss %.2f%%, %d/%d allocations both ways" % (
                    "{:,.0f}".format(res["relayed_per_cpu_second"] or 0), res["cpu_percent"],
                    res["loss_percent"] or 0, res["streams_both_ways"], res["streams"]))
                runs[k].append(res)
    finally:
        procs.stop_all()
    result = {"date": datetime.date.today().isoformat(), "git": git_rev(),
              "machine": machine_info(), "args": vars(args), "runs": runs}
    command = "bench/turn" + ("" if not argv else " " + " ".join(argv))
    text = section(result, args, command)
    print(text)
    with open(os.path.join(workroot, "turn.json"), "w") as f:
        json.dump(result, f, indent=1)
    if not args.no_write:
        with open(os.path.join(BENCH_DIR, "results", "turn.json"), "w") as f:
            json.dump(result, f, indent=1)
        write_section(os.path.join(REPO, "BENCHMARKS.md"), text, START, END)
        log("wrote BENCHMARKS.md (TURN section) and bench/results/turn.json")
    return 0
