"""bench/presence: what presence subscriptions cost in memory, up to the bound.

One hedgewitch (UDP on loopback, the load generator's network trusted so that its rate is not
limited) gets N SUBSCRIBEs to `presence`, each from a watcher of another domain (no digest:
the same 200 and neutral NOTIFY a watcher not allowed gets), each for its own name, paced;
SIPp plays the watchers (bench/sipp/subscribe_presence.xml) and answers every NOTIFY. The server's resident memory (VmRSS)
before and once `hedgewitch presence --json` lists all N gives the bytes a subscription
takes; one more SUBSCRIBE past `presence.max_subscriptions` must get 503.
"""

import argparse
import datetime
import json
import os
import socket
import time

from . import procs
from .relay import log, write_section
from .main import REPO, build, git_rev, machine_info
from .servers import ServerError, taskset

START = "<!-- presence:start -->"
END = "<!-- presence:end -->"
HOST = "127.0.0.1"
PORT = 25060
DOMAIN = "bench.test"
USERS = 300


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/presence", description=__doc__.splitlines()[0])
    p.add_argument("--subscriptions", type=int, default=100_000, help="default 100,000")
    p.add_argument("--rate", type=int, default=2000, help="SUBSCRIBEs a second; default 2,000")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    return p.parse_args(argv)


def rss_kib(pid):
    return procs.status_kb(pid, "VmRSS")


def subscribe(i, port):
    call_id = "sub-%d@bench" % i
    return ("SUBSCRIBE sip:user%d@%s SIP/2.0\r\n"
            "Via: SIP/2.0/UDP %s:%d;branch=z9hG4bKsub%d;rport\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:watcher%d@elsewhere.test>;tag=w%d\r\n"
            "To: <sip:user%d@%s>\r\nCall-ID: %s\r\nCSeq: 1 SUBSCRIBE\r\n"
            "Contact: <sip:watcher%d@%s:%d>\r\nEvent: presence\r\nExpires: 3600\r\n"
            "Content-Length: 0\r\n\r\n" % (i % USERS, DOMAIN, HOST, port, i, i, i, i % USERS, DOMAIN,
                                           call_id, i, HOST, port)).encode()


def answer_notify(sock, data, addr):
    head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    keep = [l for l in head[1:] if l.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")]
    sock.sendto(("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode(), addr)


def drive(n, rate, workroot):
    """SIPp sends n SUBSCRIBEs at `rate` (each its own call: SUBSCRIBE, 200, NOTIFY, 200);
    returns its exit status and its summary line of successful calls."""
    scenario = os.path.join(REPO, "bench", "sipp", "subscribe_presence.xml")
    argv = taskset(1) + ["sipp", "%s:%d" % (HOST, PORT), "-sf", scenario, "-key", "domain", DOMAIN,
                         "-i", HOST, "-m", str(n), "-r", str(rate), "-l", "20000",
                         "-timeout", "%ds" % (n // rate + 120), "-timeout_error", "-nostdin",
                         "-trace_stat", "-stf", os.path.join(workroot, "sipp-stat.csv")]
    st, out, err = procs.run("sipp", argv, workroot, n // rate + 180)
    return st, (out + err)[-2000:]


def main(argv):
    args = parse_args(argv)
    procs.install_signal_handlers()
    workroot = os.path.join("/tmp/hwbench-presence", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    os.makedirs(workroot)
    binary = build(log, workroot, args.no_build)
    data = os.path.join(workroot, "data")
    cfg = os.path.join(workroot, "hedgewitch.toml")
    with open(cfg, "w") as f:
        f.write('domain = "%s"\ndata_dir = "%s"\nlisten = ["udp:%s:%d"]\nstun = []\nlog = "warn"\n'
                % (DOMAIN, data, HOST, PORT))
        f.write('\n[security]\ntrusted = ["%s/8"]\n' % HOST)
        f.write('\n[presence]\nmax_subscriptions = %d\n' % args.subscriptions)
        f.write('\n[turn]\nlisten = []\n[relay]\nmode = "never"\n')
    csv = os.path.join(workroot, "users.csv")
    with open(csv, "w") as f:
        for i in range(USERS):
            f.write("user%d,,presence-Bench-%d-pw\n" % (i, i))
    st, out, err = procs.run("import", [binary, "-c", cfg, "user", "import", csv], workroot, 300)
    if st != 0:
        raise SystemExit("user import failed: %s%s" % (out, err))
    env = dict(os.environ, NO_COLOR="1")
    env.pop("RUST_LOG", None)
    server = procs.Proc("hedgewitch", taskset(0) + [binary, "-c", cfg, "serve"], workroot, env=env)
    try:
        if not procs.wait_until(lambda: procs.run("status", [binary, "-c", cfg, "status", "--json"],
                                                   workroot, 10)[0] == 0, 30, 0.1):
            raise ServerError("hedgewitch did not start")
        time.sleep(1)
        before = rss_kib(server.pid)
        log("RSS before: %d KiB; %d SUBSCRIBEs at %d/s ..." % (before, args.subscriptions, args.rate))
        t0 = time.monotonic()
        st, said = drive(args.subscriptions, args.rate, workroot)
        took = time.monotonic() - t0
        if st != 0:
            log("SIPp ended with %s: %s" % (st, said))
        st, out, _ = procs.run("presence", [binary, "-c", cfg, "presence", "--json"], workroot, 60)
        listed = len(json.loads(out)) if st == 0 else -1
        time.sleep(1)
        after = rss_kib(server.pid)
        # One past the bound.
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        sock.setblocking(False)
        port = sock.getsockname()[1]
        sock.sendto(subscribe(args.subscriptions + 1, port), (HOST, PORT))
        extra = None
        end = time.monotonic() + 5
        while extra is None and time.monotonic() < end:
            try:
                data, _ = sock.recvfrom(65536)
                if data.startswith(b"SIP/2.0"):
                    extra = data.split(b"\r\n", 1)[0].decode()
            except BlockingIOError:
                time.sleep(0.01)
        per_sub = (after - before) * 1024 / max(listed, 1)
        log("listed: %d, in %.1f s" % (listed, took))
        log("RSS after: %d KiB (+%d KiB): %.0f bytes a subscription; one more: %s"
            % (after, after - before, per_sub, extra))
    finally:
        server.stop()
    m = machine_info()
    model, cpus, kernel = m["cpu_model"], m["nproc"], m["kernel"]
    text = "\n".join([
        START,
        "## Presence: memory per subscription",
        "",
        "`bench/presence%s` at %s (%s, %d CPUs, kernel %s), %s." % (
            " --no-build" if args.no_build else "", git_rev(), model.split()[0] if model else "?",
            cpus, kernel, datetime.date.today().isoformat()),
        "",
        "%s SUBSCRIBEs to `presence` at %s/s (SIPp, bench/sipp/subscribe_presence.xml), each from"
        " its own watcher of another domain for its own name (the neutral subscriptions outsiders"
        " get), every NOTIFY answered; the server's VmRSS before and once `hedgewitch presence`"
        " lists them all." % ("{:,}".format(args.subscriptions), "{:,}".format(args.rate)),
        "",
        "| subscriptions held | RSS before | RSS after | per subscription | one more SUBSCRIBE |",
        "|---:|---:|---:|---:|---|",
        "| %s | %s KiB | %s KiB | %s bytes | %s |" % ("{:,}".format(listed), "{:,}".format(before),
                                                   "{:,}".format(after), "{:,.0f}".format(per_sub), extra),
        "",
        "Bound (issue 16): `presence.max_subscriptions`, 100,000 by default; past it, 503.",
        END,
        "",
    ])
    if not args.no_write:
        write_section(os.path.join(REPO, "BENCHMARKS.md"), text, START, END)
    print(text)
    return 0 if listed == args.subscriptions and extra and " 503 " in extra + " " else 1
