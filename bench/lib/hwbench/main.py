"""bench/run: hedgewitch and Kamailio side by side under the same SIPp load."""

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time

from . import measure, procs, profiles, report, sipp
from .servers import Hedgewitch, Kamailio, ServerError, BENCH_DIR
from .users import UserSet

REPO = os.path.dirname(BENCH_DIR)
WORK_BASE = "/tmp/hwbench"

# Kamailio's UDP workers for the runs (see bench/README.md, "Kamailio workers", for the
# measurements behind this choice; `bench/run --tune-kamailio` repeats them).
KAMAILIO_CHILDREN = 1
KAMAILIO_CHILDREN_REASON = (
    "one worker gave Kamailio its best rates in `bench/run --tune-kamailio` (1, 2 and 4 "
    "workers tried; more workers on one core only add context switches); CPU per 1,000 counts "
    "all of Kamailio's processes (workers, timers, control socket, main), %d in all with "
    "`-n 1`.")

PROFILES = {
    "full": dict(fixed_seconds=20, fixed_rounds=2, probe_seconds=10, confirm_seconds=30,
                 max_probes=7, confirm_tries=5, memory_users=100000, memory_reg_rate=2000,
                 memory_settle_s=35, memory_calls=10000, memory_calls_rate=500),
    "quick": dict(fixed_seconds=6, fixed_rounds=1, probe_seconds=4, confirm_seconds=8,
                  max_probes=5, confirm_tries=4, memory_users=10000, memory_reg_rate=2000,
                  memory_settle_s=35, memory_calls=2000, memory_calls_rate=500),
}

PHASES = ("fixed", "maxrate", "memory")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="bench/run",
        description="Builds hedgewitch (release), installs SIPp and Kamailio from Debian's "
                    "packages if missing, and measures both servers side by side with the same "
                    "SIPp scenarios on loopback. Writes the side-by-side section of "
                    "BENCHMARKS.md and bench/results/latest.json.")
    p.add_argument("--quick", action="store_true",
                   help="short runs, one round, 10k contacts and 2k calls (development)")
    p.add_argument("--only", metavar="SCENARIO", action="append",
                   help="register, call or message (repeatable or comma-separated)")
    p.add_argument("--phases", default=",".join(PHASES),
                   help="comma-separated subset of: fixed, maxrate, memory (default: all)")
    p.add_argument("--no-build", action="store_true", help="use the existing release binary")
    p.add_argument("--no-install", action="store_true", help="do not install missing packages")
    p.add_argument("--no-write", action="store_true",
                   help="do not touch BENCHMARKS.md or bench/results/latest.json")
    p.add_argument("--kamailio-children", type=int, default=KAMAILIO_CHILDREN,
                   help="Kamailio UDP workers, -n (default %d)" % KAMAILIO_CHILDREN)
    p.add_argument("--kamailio-shm", type=int, default=1024, help="Kamailio -m, MiB (default 1024)")
    p.add_argument("--kamailio-pkg", type=int, default=32, help="Kamailio -M, MiB (default 32)")
    p.add_argument("--kamailio-auth", choices=("htable", "auth_db"), default="htable",
                   help="where Kamailio looks up the users' HA1 (default htable)")
    p.add_argument("--perf", action="store_true",
                   help="profile each server with `perf record -e cpu-clock -g` during its "
                        "fixed-rate runs; the hottest symbols (kernel and user) go to "
                        "bench/results/profile-SCENARIO.txt")
    p.add_argument("--render", metavar="RESULTS_JSON",
                   help="only rewrite the BENCHMARKS.md section and latest.json from the "
                        "results.json of an earlier run (its work folder)")
    p.add_argument("--tune-kamailio", metavar="N,N,...", nargs="?", const="1,2,4",
                   help="instead of the comparison: the highest rate of Kamailio with each "
                        "number of workers (default 1,2,4), written to "
                        "bench/results/kamailio-children.json")
    a = p.parse_args(argv)
    only = []
    for o in a.only or []:
        only += [x.strip() for x in o.split(",") if x.strip()]
    for o in only:
        if o not in measure.SCENARIOS:
            p.error("unknown scenario %r (register, call, message)" % o)
    a.only = only
    a.phases = [x.strip() for x in a.phases.split(",") if x.strip()]
    for x in a.phases:
        if x not in PHASES:
            p.error("unknown phase %r" % x)
    return a


class Logger:
    def __init__(self, path):
        self.f = open(path, "a")
        self.t0 = time.monotonic()

    def __call__(self, msg):
        el = time.monotonic() - self.t0
        line = "[%02d:%02d] %s" % (el // 60, el % 60, msg)
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def ensure_packages(log, workroot, allowed, perf=False):
    need = []
    tools = [("sipp", "sip-tester"), ("kamailio", "kamailio"), ("kamcmd", "kamailio"),
             ("taskset", "util-linux")]
    if perf:
        tools.append(("perf", "linux-perf"))
    for tool, pkg in tools:
        if not shutil.which(tool) and pkg not in need:
            need.append(pkg)
    if not need:
        return
    if not allowed:
        raise SystemExit("missing packages: %s (and --no-install)" % " ".join(need))
    log("installing %s from Debian's packages ..." % " ".join(need))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    st, out, err = procs.run("apt-get-update", ["apt-get", "update"], workroot, 900, env=env)
    if st != 0:
        raise SystemExit("apt-get update failed (%s):\n%s" % (st, err[-3000:]))
    st, out, err = procs.run("apt-get-install", ["apt-get", "install", "-y"] + need, workroot,
                             1800, env=env)
    if st != 0:
        raise SystemExit("apt-get install failed (%s):\n%s" % (st, err[-3000:]))


def build(log, workroot, skip):
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    binary = os.path.join(target, "release", "hedgewitch")
    if not skip:
        log("cargo build --release ...")
        st, out, err = procs.run("cargo-build", ["cargo", "build", "--release"], workroot, 3600,
                                 cwd=REPO)
        if st != 0:
            raise SystemExit("cargo build --release failed (%s):\n%s" % (st, err[-4000:]))
    if not os.path.exists(binary):
        raise SystemExit("no binary at %s" % binary)
    return binary


def machine_info():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1])
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "mem_gib": round(mem / 1024 / 1024, 1), "loadavg_start": procs.loadavg()}


def git_rev():
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "crates", "src",
                                "Cargo.toml", "Cargo.lock"],
                               capture_output=True, text=True, timeout=20).stdout.strip()
        return rev + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def new_workroot():
    os.makedirs(WORK_BASE, exist_ok=True)
    # keep the last few runs' folders (logs, SIPp files) for inspection
    old = sorted(d for d in os.listdir(WORK_BASE) if d[:1].isdigit())
    for d in old[:-3]:
        shutil.rmtree(os.path.join(WORK_BASE, d), ignore_errors=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = os.path.join(WORK_BASE, stamp)
    os.makedirs(root)
    return root


def render(path):
    with open(path) as f:
        results = json.load(f)
    text = report.section(results, measure.SCENARIOS)
    report.write_json(os.path.join(BENCH_DIR, "results", "latest.json"), results)
    report.write_markdown(os.path.join(REPO, "BENCHMARKS.md"), text)
    print("wrote BENCHMARKS.md (side-by-side section) and bench/results/latest.json from %s" % path)
    return 0


def main(argv):
    args = parse_args(argv)
    if args.render:
        return render(args.render)
    procs.install_signal_handlers()
    t_start = time.monotonic()
    profile = dict(PROFILES["quick" if args.quick else "full"])
    workroot = new_workroot()
    log = Logger(os.path.join(workroot, "bench.log"))
    log("work folder: %s" % workroot)
    if (os.cpu_count() or 1) < 2:
        log("WARNING: fewer than 2 CPUs: the server and SIPp cannot be pinned apart")
    try:
        ensure_packages(log, workroot, not args.no_install, perf=args.perf)
        binary = build(log, workroot, args.no_build)
        return run(args, profile, workroot, log, binary, t_start)
    except KeyboardInterrupt:
        log("interrupted: stopping every process bench/run started")
        return 130
    except (ServerError, measure.RunError) as e:
        log("ERROR: %s" % e)
        log("logs are kept in %s" % workroot)
        return 1
    finally:
        # a second Ctrl-C must not cut the clean-up short
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        procs.stop_all()


def run(args, profile, workroot, log, binary, t_start):
    scenarios = args.only or list(measure.SCENARIOS)
    ports = procs.free_udp_ports(4)
    log("ports: hedgewitch %d, Kamailio %d, SIPp UAS %d, SIPp UAC %d" % tuple(ports))
    userroot = os.path.join(workroot, "users")
    small = UserSet(userroot, "u1000", 1000)
    hw = Hedgewitch(binary, ports[0])
    kam = Kamailio(ports[1], args.kamailio_children, args.kamailio_shm, args.kamailio_pkg,
                   args.kamailio_auth)
    hw.prepare(small, workroot)
    bench = measure.Bench(workroot, ports, log, perf=args.perf)

    if args.tune_kamailio:
        return tune(args, profile, bench, kam, small, scenarios, log, t_start)

    big = None
    if "memory" in args.phases and "register" in scenarios:
        log("writing %d users for the contacts test ..." % profile["memory_users"])
        big = UserSet(userroot, "u%d" % profile["memory_users"], profile["memory_users"])
        hw.prepare(big, workroot)
        log("  hedgewitch user import of %d users: %.1f s" % (
            big.count, hw.templates[big.name][1]))

    versions = {"hedgewitch": hw.version(workroot), "hedgewitch_git": git_rev(),
                "kamailio": kam.version(workroot), "sipp": sipp.sipp_version()}
    command = "bench/run" + ("".join(" " + shlex.quote(a) for a in sys.argv[1:]))
    results = {
        "schema": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full",
        "command": command,
        "only": scenarios,
        "partial": bool(args.only) or set(args.phases) != set(PHASES),
        "phases": args.phases,
        "machine": machine_info(),
        "versions": versions,
        "settings": dict(profile, kamailio_children=kam.children, kamailio_shm_mb=kam.shm_mb,
                         kamailio_pkg_mb=kam.pkg_mb, kamailio_auth=kam.auth_mode,
                         kamailio_command=kam.command_line(),
                         hedgewitch_command=hw.command_line(),
                         server_cpu=measure.SERVER_CPU, sipp_cpu=measure.SIPP_CPU),
        "scenarios": {},
    }
    log("hedgewitch %s (git %s); %s; %s" % (versions["hedgewitch"], versions["hedgewitch_git"],
                                           versions["kamailio"], versions["sipp"]))
    servers = [hw, kam]
    quanta = []
    for key in scenarios:
        scen = measure.SCENARIOS[key]
        res = results["scenarios"].setdefault(key, {})
        log("== %s ==" % scen.title)
        if "fixed" in args.phases:
            res["fixed"] = bench.fixed_rate(servers, scen, small, profile["fixed_seconds"],
                                            profile["fixed_rounds"])
            quanta.append(res["fixed"]["rtt_quantum_ms"])
            if args.perf:
                path = os.path.join(BENCH_DIR, "results", "profile-%s.txt" % key)
                profiles.write(path, scen, res["fixed"], command)
                log("  profile written to %s" % path)
        if "maxrate" in args.phases:
            res["max_rate"] = {}
            for s in servers:
                log("  highest rate, %s ..." % s.label)
                res["max_rate"][s.key] = bench.max_rate(
                    s, scen, small, profile["probe_seconds"], profile["confirm_seconds"],
                    profile["max_probes"], profile["confirm_tries"])
                log("  => %s: %s %s/s (limit: %s)" % (s.label, res["max_rate"][s.key]["rate"],
                                                     scen.unit, res["max_rate"][s.key]["bottleneck"]))
        if "memory" in args.phases and key == "register":
            res["memory_contacts"] = {}
            for s in servers:
                log("  memory with %d contacts, %s ..." % (big.count, s.label))
                m = bench.memory_contacts(s, big, profile["memory_reg_rate"], profile["memory_settle_s"])
                res["memory_contacts"][s.key] = m
                log("    %s: PSS idle %.1f MiB, with %s contacts %.1f MiB" % (
                    s.label, m["idle"]["pss_kib"] / 1024, m["contacts"],
                    m["with_contacts"]["pss_kib"] / 1024))
        if "memory" in args.phases and key == "call":
            res["memory_calls"] = {}
            for s in servers:
                log("  memory with %d calls in progress, %s ..." % (profile["memory_calls"], s.label))
                m = bench.memory_calls(s, small, profile["memory_calls"], profile["memory_calls_rate"])
                res["memory_calls"][s.key] = m
                log("    %s: %s calls up, PSS %.1f MiB" % (
                    s.label, m["established"], m["with_calls"]["pss_kib"] / 1024))
        report.write_json(os.path.join(workroot, "results.json"), results)

    results["settings"]["rtt_quantum_ms"] = min(quanta) if quanta else 1
    nprocs = kamailio_process_count(results)
    results["settings"]["kamailio_children_reason"] = KAMAILIO_CHILDREN_REASON % nprocs \
        if kam.children == KAMAILIO_CHILDREN else "`-n %d` was asked on the command line." % kam.children
    results["wall_time_s"] = round(time.monotonic() - t_start, 1)
    report.write_json(os.path.join(workroot, "results.json"), results)
    text = report.section(results, measure.SCENARIOS)
    with open(os.path.join(workroot, "side-by-side.md"), "w") as f:
        f.write(text)
    if args.perf:
        log("--perf: the figures of profiled runs are disturbed; BENCHMARKS.md left alone "
            "(section in %s/side-by-side.md)" % workroot)
    elif args.no_write:
        log("--no-write: section in %s/side-by-side.md" % workroot)
    else:
        report.write_json(os.path.join(BENCH_DIR, "results", "latest.json"), results)
        report.write_markdown(os.path.join(REPO, "BENCHMARKS.md"), text)
        log("wrote BENCHMARKS.md (side-by-side section) and bench/results/latest.json")
    log("done in %.1f min" % (results["wall_time_s"] / 60))
    return 0


def kamailio_process_count(results):
    for res in results["scenarios"].values():
        for m in (res.get("memory_calls") or {}, res.get("memory_contacts") or {}):
            k = m.get("kamailio")
            if k:
                mem = k.get("with_calls") or k.get("with_contacts")
                if mem:
                    return mem["processes"]
    return 6


def tune(args, profile, bench, kam, userset, scenarios, log, t_start):
    counts = [int(x) for x in args.tune_kamailio.split(",") if x.strip()]
    out = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "mode": "quick" if args.quick else "full", "machine": machine_info(), "runs": {}}
    for key in scenarios:
        scen = measure.SCENARIOS[key]
        for n in counts:
            kam.children = n
            log("== Kamailio -n %d, %s ==" % (n, scen.title))
            m = bench.max_rate(kam, scen, userset, profile["probe_seconds"],
                               profile["confirm_seconds"], profile["max_probes"],
                               profile["confirm_tries"])
            fx = bench.run_load(kam, scen, userset, scen.fixed_rate,
                                int(scen.fixed_rate * profile["fixed_seconds"]), "fixed")
            out["runs"].setdefault(key, {})[str(n)] = {
                "max_rate": m["rate"], "bottleneck": m["bottleneck"],
                "cpu_ms_per_1000_at_fixed_rate": fx["cpu_ms_per_1000"],
                "probes": [(p["rate"], p["pass"]) for p in m["probes"]]}
            log("  => -n %d: %s %s/s, %s ms CPU per 1,000 at %d/s" % (
                n, m["rate"], scen.unit, fx["cpu_ms_per_1000"], scen.fixed_rate))
    out["wall_time_s"] = round(time.monotonic() - t_start, 1)
    path = os.path.join(BENCH_DIR, "results", "kamailio-children.json")
    if not args.no_write:
        report.write_json(path, out)
    print(json.dumps(out["runs"], indent=1))
    return 0
