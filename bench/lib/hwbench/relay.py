"""bench/relay: the media relay's forwarding cost, against rtpengine and a plain echo loop.

The same RTP load (bench/rtpload: N streams, each direction PPS packets a second of 172-byte
PCMU packets) goes through three forwarders in turn, each pinned to CPU 0 with the load on
CPU 1:
  - hedgewitch's relay, with N relayed calls set up through the server by SIPp (relay.mode =
    "always"); the relay ports come from `hedgewitch calls --json`;
  - rtpengine (Debian's rtpengine-daemon, userspace forwarding: --table=-1, one worker
    thread), with N sessions made over its NG control protocol;
  - `rtpload echo`: recvmmsg on one socket, sendmmsg of the same buffers out of its pair, to a
    fixed address; nothing else. This is the machine's limit for the traffic.
For each, the packets delivered to the generator during the measured window and the
forwarder's CPU time (utime + stime of its process, all threads) over that window give
packets forwarded per CPU-second.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import socket
import time

from . import procs, sipp
from .report import _median as median
from .main import REPO, build, git_rev, machine_info
from .servers import BENCH_DIR, HOST, Hedgewitch, ServerError, taskset
from .users import CALLEE, DOMAIN, UserSet

START = "<!-- relay:start -->"
END = "<!-- relay:end -->"
FORWARDER_CPU = 0
LOAD_CPU = 1
SIP_PORT = 25060
UAS_PORT = 25062
UAC_PORT = 25064
NG_PORT = 22223
GEN_BASE = 44000
RELAY_PORTS = (30000, 39999)
ECHO_FIRST = 50000
SYSTEMS = ("hedgewitch", "rtpengine", "echo")
LABELS = {"hedgewitch": "hedgewitch relay", "rtpengine": "rtpengine (userspace)",
          "echo": "echo loop (limit)"}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/relay", description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=500, help="RTP streams (calls); default 500")
    p.add_argument("--pps", type=int, default=50,
                   help="packets a second per direction per stream; default 50 (20 ms)")
    p.add_argument("--secs", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--rounds", type=int, default=3, help="runs of each forwarder")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--no-write", action="store_true",
                   help="leave BENCHMARKS.md and bench/results/relay.json alone")
    return p.parse_args(argv)


def log(msg):
    print("[%s] %s" % (datetime.datetime.now().strftime("%H:%M:%S"), msg), flush=True)


def ensure_packages(workroot):
    need = [pkg for tool, pkg in (("sipp", "sip-tester"), ("rtpengine", "rtpengine-daemon"),
                                  ("taskset", "util-linux")) if not shutil.which(tool)]
    if not need:
        return
    log("installing %s from Debian's packages ..." % " ".join(need))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends"] + need):
        st, _, err = procs.run("apt-get", argv, workroot, 1800, env=env)
        if st != 0:
            raise SystemExit("%s failed (%s):\n%s" % (" ".join(argv), st, err[-3000:]))


def build_rtpload(workroot, skip):
    folder = os.path.join(BENCH_DIR, "rtpload")
    binary = os.path.join(folder, "target", "release", "rtpload")
    if not skip or not os.path.exists(binary):
        log("cargo build --release (bench/rtpload) ...")
        st, _, err = procs.run("cargo-rtpload", ["cargo", "build", "--release"], workroot, 1800,
                               cwd=folder)
        if st != 0:
            raise SystemExit("building rtpload failed (%s):\n%s" % (st, err[-3000:]))
    return binary


# ------------------------------------------------------------------------------- forwarders

class Echo:
    key = "echo"

    def __init__(self, rtpload):
        self.rtpload = rtpload
        self.proc = None

    def start(self, run_dir, n):
        self.proc = procs.Proc("echo", taskset(FORWARDER_CPU) + [
            self.rtpload, "echo", ECHO_FIRST, n, GEN_BASE], run_dir)
        if not procs.wait_until(lambda: procs.udp_port_bound(ECHO_FIRST + 2 * n - 1), 10):
            raise ServerError("the echo loop did not bind its ports")
        return [(ECHO_FIRST + 2 * i, ECHO_FIRST + 2 * i + 1) for i in range(n)]

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        if self.proc:
            self.proc.stop(grace=2.0)


def bencode(x):
    if isinstance(x, str):
        x = x.encode()
    if isinstance(x, bytes):
        return str(len(x)).encode() + b":" + x
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, list):
        return b"l" + b"".join(bencode(i) for i in x) + b"e"
    if isinstance(x, dict):
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in sorted(x.items())) + b"e"
    raise TypeError(type(x))


def sdp(port):
    return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n" % port)


class Rtpengine:
    key = "rtpengine"

    def __init__(self):
        self.proc = None

    def start(self, run_dir, n):
        self.proc = procs.Proc("rtpengine", taskset(FORWARDER_CPU) + [
            "rtpengine", "--config-file=none", "--foreground", "--log-stderr", "--log-level=4",
            "--interface=127.0.0.1", "--listen-ng=127.0.0.1:%d" % NG_PORT,
            "--port-min=%d" % RELAY_PORTS[0], "--port-max=%d" % RELAY_PORTS[1],
            "--num-threads=1", "--table=-1", "--timeout=600"], run_dir)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2.0)

        def ng(cookie, msg):
            for _ in range(5):
                s.sendto(("%s " % cookie).encode() + bencode(msg), ("127.0.0.1", NG_PORT))
                try:
                    data = s.recv(65535)
                except socket.timeout:
                    continue
                m = re.search(rb"m=audio (\d+)", data)
                if m:
                    return int(m.group(1))
                raise ServerError("rtpengine answered %r" % data[:300])
            raise ServerError("rtpengine does not answer on its NG port")

        time.sleep(0.5)
        targets = []
        for i in range(n):
            cid = "bench-%d" % i
            to_callee = ng("o%d" % i, {"command": "offer", "call-id": cid, "from-tag": "a",
                                       "sdp": sdp(GEN_BASE + 2 * i)})
            to_caller = ng("a%d" % i, {"command": "answer", "call-id": cid, "from-tag": "a",
                                       "to-tag": "b", "sdp": sdp(GEN_BASE + 2 * i + 1)})
            targets.append((to_caller, to_callee))
        return targets

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        if self.proc:
            self.proc.stop(grace=5.0)


class RelayHedgewitch(Hedgewitch):
    """The server with its relay on for every call, and no timeout during the runs."""

    def _write_config(self, folder, data_dir):
        path = super()._write_config(folder, data_dir)
        with open(path, "a") as f:
            f.write('\n[relay]\nmode = "always"\nports = "%d-%d"\ntimeout = 600\n' % RELAY_PORTS)
        return path


class HedgewitchRelay:
    key = "hedgewitch"

    def __init__(self, binary, userset, workroot):
        self.server = RelayHedgewitch(binary, SIP_PORT)
        self.server.prepare(userset, workroot)
        self.userset = userset
        self.sipps = []

    def start(self, run_dir, n):
        srv = self.server
        srv.start(run_dir, self.userset, FORWARDER_CPU)
        reg = sipp.Sipp("callee_register", sipp.command(
            "register.xml", srv.addr, UAS_PORT, LOAD_CPU, run_dir, "callee_register", calls=1,
            timeout_s=15, inf=self.userset.callee_inf, keys={"domain": DOMAIN, "expires": 3600},
            auth_uri=DOMAIN, stats=False), run_dir)
        if reg.wait(30) != 0:
            raise ServerError("the callee's REGISTER failed: %s" % reg.errors_tail())
        hold_ms = 600000
        uas = sipp.Sipp("uas", sipp.command(
            "uas_answer.xml", srv.addr, UAS_PORT, LOAD_CPU, run_dir, "uas", calls=n,
            timeout_s=900, stats=False), run_dir)
        self.sipps.append(uas)
        procs.wait_until(lambda: procs.udp_port_bound(UAS_PORT), 15)
        uac = sipp.Sipp("uac", sipp.command(
            "uac_call.xml", srv.addr, UAC_PORT, LOAD_CPU, run_dir, "uac", calls=n,
            timeout_s=900, rate=200, limit=n, hold_ms=hold_ms, inf=self.userset.callers_inf,
            keys={"domain": DOMAIN, "callee": CALLEE[0]},
            auth_uri="%s@%s" % (CALLEE[0], DOMAIN), stats=False), run_dir)
        self.sipps.append(uac)
        calls = []

        def answered():
            nonlocal calls
            st, out, _ = srv.cli(["calls", "--json"], run_dir, timeout=20)
            if st != 0:
                return False
            try:
                calls = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                return False
            return sum(1 for c in calls if c.get("state") == "answered" and c.get("streams")) >= n

        if not procs.wait_until(answered, 120, 0.5):
            raise ServerError("only %d of %d relayed calls were set up" % (len(calls), n))
        return [(c["streams"][0]["caller_port"], c["streams"][0]["callee_port"])
                for c in calls if c.get("streams")][:n]

    def pids(self):
        return self.server.pids()

    def stop(self):
        for s in self.sipps:
            s.stop()
        self.sipps = []
        self.server.stop()


# ------------------------------------------------------------------------------- measurement

def measure(fwd, rtpload, run_dir, args):
    os.makedirs(run_dir, exist_ok=True)
    try:
        targets = fwd.start(run_dir, args.streams)
        path = os.path.join(run_dir, "targets.txt")
        with open(path, "w") as f:
            for a, b in targets:
                f.write("%d %d\n" % (a, b))
        gen = procs.Proc("rtpload", taskset(LOAD_CPU) + [
            rtpload, "load", path, GEN_BASE, args.pps, args.secs, args.warmup], run_dir)
        time.sleep(args.warmup)
        t0, c0 = time.monotonic(), procs.cpu_ticks(fwd.pids())
        time.sleep(args.secs)
        t1, c1 = time.monotonic(), procs.cpu_ticks(fwd.pids())
        st = gen.wait(args.secs + 30)
        if st != 0:
            raise ServerError("rtpload failed (%s): %s" % (st, gen.tail(10)))
        with open(gen.out_path) as f:
            load = json.loads(f.read().strip().splitlines()[-1])
    finally:
        fwd.stop()
    hz = os.sysconf("SC_CLK_TCK")
    cpu_s = (c1 - c0) / hz
    wall = t1 - t0
    return {
        "streams": load["streams"], "sent": load["sent"], "received": load["received"],
        "streams_both_ways": load["streams_both_ways"], "cpu_seconds": cpu_s, "wall_seconds": wall,
        "cpu_percent": 100.0 * cpu_s / wall if wall else 0.0,
        "forwarded_per_cpu_second": load["received"] / cpu_s if cpu_s > 0 else None,
        # Packets sent just before the window may arrive in it: a loss below 0 reads as none.
        "loss_percent": max(0.0, 100.0 * (1 - load["received"] / load["sent"]))
        if load["sent"] else None,
    }


def section(res, args, command):
    rows = {k: res["runs"][k] for k in SYSTEMS}
    med = {k: median([r["forwarded_per_cpu_second"] for r in rows[k]]) for k in SYSTEMS}
    cpu = {k: median([r["cpu_percent"] for r in rows[k]]) for k in SYSTEMS}
    loss = {k: median([r["loss_percent"] for r in rows[k]]) for k in SYSTEMS}
    offered = args.streams * args.pps * 2
    out = [START, "## Media relay: packets forwarded per CPU-second", "",
           "`%s` at %s (%s, %s CPUs, kernel %s), %s." % (
               command, res["git"], res["machine"]["cpu_model"], res["machine"]["nproc"],
               res["machine"]["kernel"], res["date"]), "",
           "%d streams, each direction %d packets/s (172-byte PCMU RTP): %s packets/s offered, "
           "measured over %g s after %g s of warm-up; median of %d runs each, forwarder on CPU "
           "0, load on CPU 1. CPU is the forwarder process's utime + stime (all threads; the "
           "kernel's work on each datagram is most of it)." % (
               args.streams, args.pps, "{:,}".format(offered), args.secs, args.warmup,
               args.rounds), "",
           "| forwarder | packets forwarded per CPU-second | CPU (% of one core) | loss | "
           "vs rtpengine | vs echo loop |",
           "|---|---:|---:|---:|---:|---:|"]
    for k in SYSTEMS:
        def ratio(other):
            return "%.2f×" % (med[k] / med[other]) if med[k] and med[other] else "–"
        out.append("| %s | %s | %.1f | %.2f%% | %s | %s |" % (
            LABELS[k], "{:,.0f}".format(med[k]) if med[k] else "–", cpu[k] or 0, loss[k] or 0,
            ratio("rtpengine"), ratio("echo")))
    out += ["", "Every run (packets/CPU-second): " + "; ".join(
        "%s %s" % (LABELS[k], ", ".join("{:,.0f}".format(r["forwarded_per_cpu_second"] or 0)
                                        for r in rows[k])) for k in SYSTEMS) + ".", "",
            "Targets (issue 5): at least rtpengine's figure, and at least 80% of the echo loop's.",
            END]
    return "\n".join(out) + "\n"


def write_section(path, text, start=START, end=END):
    """Replaces the section between `start` and `end` (each bench its own markers), or
    appends it when there is none."""
    old = open(path).read() if os.path.exists(path) else ""
    if start in old and end in old:
        new = old[:old.index(start)] + text + old[old.index(end) + len(end):].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    with open(path + ".tmp", "w") as f:
        f.write(new)
    os.replace(path + ".tmp", path)


def main(argv):
    args = parse_args(argv)
    procs.install_signal_handlers()
    workroot = os.path.join("/tmp/hwbench-relay", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    os.makedirs(workroot)
    ensure_packages(workroot)
    binary = build(log, workroot, args.no_build)
    rtpload = build_rtpload(workroot, args.no_build)
    userset = UserSet(workroot, "relay", 1)
    forwarders = {"hedgewitch": HedgewitchRelay(binary, userset, workroot),
                  "rtpengine": Rtpengine(), "echo": Echo(rtpload)}
    runs = {k: [] for k in SYSTEMS}
    try:
        for r in range(args.rounds):
            order = SYSTEMS[r % 3:] + SYSTEMS[:r % 3]
            for k in order:
                log("round %d: %s ..." % (r + 1, LABELS[k]))
                res = measure(forwarders[k], rtpload, os.path.join(workroot, "%s-%d" % (k, r)), args)
                log("  %s packets/CPU-s, CPU %.0f%%, loss %.2f%%, %d/%d streams both ways" % (
                    "{:,.0f}".format(res["forwarded_per_cpu_second"] or 0), res["cpu_percent"],
                    res["loss_percent"] or 0, res["streams_both_ways"], res["streams"]))
                runs[k].append(res)
    finally:
        procs.stop_all()
    result = {"date": datetime.date.today().isoformat(), "git": git_rev(),
              "machine": machine_info(), "args": vars(args), "runs": runs}
    command = "bench/relay" + ("" if not argv else " " + " ".join(argv))
    text = section(result, args, command)
    print(text)
    with open(os.path.join(workroot, "relay.json"), "w") as f:
        json.dump(result, f, indent=1)
    if not args.no_write:
        with open(os.path.join(BENCH_DIR, "results", "relay.json"), "w") as f:
            json.dump(result, f, indent=1)
        write_section(os.path.join(REPO, "BENCHMARKS.md"), text)
        log("wrote BENCHMARKS.md (relay section) and bench/results/relay.json")
    return 0
