"""The measurements: fixed-rate runs (CPU per 1,000 and response times), the highest sustained
rate on one core, and resident memory with many contacts / many calls in progress."""

import os
import shlex
import statistics
import time

from . import procs, profiles, sipp
from .servers import BENCH_DIR

REPO = os.path.dirname(BENCH_DIR)
from .users import DOMAIN, CALLEE

SERVER_CPU = 0
SIPP_CPU = 1


class Scenario:
    def __init__(self, key, title, unit, uac, uas, auth_uri, keys, fixed_rate, start_rate,
                 hold_ms, flow, rtt_what):
        self.key = key
        self.title = title
        self.unit = unit  # "registrations", "calls", "messages"
        self.uac = uac
        self.uas = uas
        self.auth_uri = auth_uri
        self.keys = keys
        self.fixed_rate = fixed_rate
        self.start_rate = start_rate
        self.hold_ms = hold_ms
        self.flow = flow
        self.rtt_what = rtt_what

    @property
    def rtt_prefix(self):
        return os.path.splitext(self.uac)[0]


SCENARIOS = {
    "register": Scenario(
        "register", "REGISTER with digest authentication", "registrations",
        "register.xml", None, DOMAIN, {"domain": DOMAIN, "expires": 3600},
        fixed_rate=500, start_rate=2000, hold_ms=None,
        flow="REGISTER → 401 → REGISTER with credentials → 200 (one of 1,000 users per call, "
             "Expires 3600; each REGISTER refreshes that user's binding)",
        rtt_what="authenticated REGISTER → 200"),
    "call": Scenario(
        "call", "Call through the proxy with digest authentication", "calls",
        "uac_call.xml", "uas_answer.xml", "%s@%s" % (CALLEE[0], DOMAIN),
        {"domain": DOMAIN, "callee": CALLEE[0]},
        fixed_rate=200, start_rate=500, hold_ms=1000,
        flow="INVITE → 100 → 407 → ACK → INVITE with credentials → 100 → 180 → 200 → ACK, "
             "1 s of call, BYE → 200; a SIPp UAS registered as the callee answers at once",
        rtt_what="authenticated INVITE → 200 (through the callee)"),
    "message": Scenario(
        "message", "MESSAGE between two registered users", "messages",
        "uac_message.xml", "uas_message.xml", "%s@%s" % (CALLEE[0], DOMAIN),
        {"domain": DOMAIN, "callee": CALLEE[0]},
        fixed_rate=500, start_rate=2000, hold_ms=None,
        flow="MESSAGE → 407 → MESSAGE with credentials → forwarded to the registered callee "
             "(a SIPp UAS) → 200",
        rtt_what="authenticated MESSAGE → 200 (through the callee)"),
}


class RunError(RuntimeError):
    pass


def percentile(values, p):
    """Nearest-rank percentile."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


def _delta(before, after):
    out = {}
    for k, v in after.items():
        if k in ("uptime_secs",):
            continue
        d = v - before.get(k, 0)
        if d:
            out[k] = d
    return out


class Bench:
    def __init__(self, workroot, ports, log, perf=False):
        self.perf = perf
        self.perf_round = 0
        self.workroot = workroot
        self.server_port = {"hedgewitch": ports[0], "kamailio": ports[1]}
        self.uas_port = ports[2]
        self.uac_port = ports[3]
        self.log = log
        self.seq = 0

    def check_ports(self, server):
        """Before each run: the ports may have been taken since (another program on the
        machine); a taken one is replaced by a free one."""
        used = {self.uas_port, self.uac_port, server.port}
        if not procs.port_free(server.port):
            server.port = procs.free_udp_ports(1, exclude=used)[0]
            self.log("    (port taken: %s now on %d)" % (server.label, server.port))
        for attr in ("uas_port", "uac_port"):
            p = getattr(self, attr)
            if not procs.port_free(p):
                new = procs.free_udp_ports(1, exclude=used | {server.port})[0]
                setattr(self, attr, new)
                used.add(new)
                self.log("    (port taken: SIPp %s now on %d)" % (attr[:3].upper(), new))

    def _run_dir(self, what, server):
        self.check_ports(server)
        self.seq += 1
        # short: the servers' control sockets live below it (a Unix socket path has 107 bytes)
        d = os.path.join(self.workroot, "%03d-%s-%s" % (self.seq, what, server.key[:3]))
        os.makedirs(d, exist_ok=True)
        return d

    # ----------------------------------------------------------------------------------------
    # the callee: registered from the UAS port, then the UAS scenario listens there

    def _start_uas(self, server, scen, userset, run_dir, calls, timeout_s, recv_timeout_ms):
        reg = sipp.Sipp("callee_register", sipp.command(
            "register.xml", server.addr, self.uas_port, SIPP_CPU, run_dir, "callee_register",
            calls=1, timeout_s=15, inf=userset.callee_inf,
            keys={"domain": DOMAIN, "expires": 3600}, auth_uri=DOMAIN, stats=False), run_dir)
        st = reg.wait(30)
        if st != 0:
            raise RunError("the callee's REGISTER failed (%s): %s" % (st, reg.errors_tail()))
        uas = sipp.Sipp("uas", sipp.command(
            scen.uas, server.addr, self.uas_port, SIPP_CPU, run_dir, "uas", calls=calls,
            timeout_s=timeout_s, recv_timeout_ms=recv_timeout_ms), run_dir)
        if not procs.wait_until(lambda: procs.udp_port_bound(self.uas_port) or not uas.proc.alive(), 15):
            uas.stop()
            raise RunError("SIPp UAS did not listen on port %d" % self.uas_port)
        if not uas.proc.alive():
            raise RunError("SIPp UAS exited at once: %s" % uas.proc.tail(10))
        return uas

    def _monitor(self, uac, uas, server, timeout, steady_s, stop_calls=None):
        """Waits for the UAC while reading, every 0.25 s, the kernel's drop counts of the three
        sockets (a socket's count is gone once its process has exited, so the highest reading
        is kept) and the CPU time of the server and of SIPp. Returns the exit code (None when
        stopped at the deadline), the drops, and the CPU use (% of one core) of the server and
        of SIPp during the steady part of the run (from 0.5 s to `steady_s`).
        With `stop_calls` (the run's call count), SIPp is stopped as soon as its statistics
        show the run has failed (a retransmission, or 0.1% of the calls failed): the highest
        rate search needs the verdict, not the rest of a failing run and its time-outs."""
        ports = {"server": server.port, "uac": self.uac_port}
        if uas is not None:
            ports["uas"] = self.uas_port
        peak = {k: 0 for k in ports}
        backlog = 0
        spids = server.pids()
        sipp_pids = [uac.proc.pid] + ([uas.proc.pid] if uas is not None else [])
        samples = []
        t0 = time.monotonic()
        deadline = t0 + timeout
        st = None
        stopped = None
        n = 0
        while True:
            n += 1
            st = uac.proc.poll()
            d = procs.udp_socket_state(list(ports.values()))
            for k, p in ports.items():
                peak[k] = max(peak[k], d.get(p, (0, 0))[0])
            backlog = max(backlog, d.get(server.port, (0, 0))[1])
            if st is not None:
                break
            samples.append((time.monotonic() - t0, procs.cpu_ticks(spids), procs.cpu_ticks(sipp_pids)))
            if time.monotonic() >= deadline:
                uac.stop()
                break
            if stop_calls and n % 4 == 0:
                a = uac.stats()
                b = uas.stats() if uas is not None else {}
                retr = a.get("retransmissions", 0) + b.get("retransmissions", 0)
                failed = a.get("failed", 0)
                if retr or failed * 1000 >= stop_calls:
                    stopped = {"after_s": round(time.monotonic() - t0, 1),
                               "retransmissions": retr, "failed": failed}
                    uac.stop()
                    st = uac.proc.poll()
                    break
            time.sleep(0.25)
        steady = {"server_pct": None, "sipp_pct": None}
        win = [s for s in samples if 0.5 <= s[0] <= max(1.5, steady_s)]
        if len(win) >= 2 and win[-1][0] - win[0][0] >= 0.9:
            dt = (win[-1][0] - win[0][0]) * procs.CLK_TCK
            steady = {"server_pct": round(100 * (win[-1][1] - win[0][1]) / dt, 1),
                      "sipp_pct": round(100 * (win[-1][2] - win[0][2]) / dt, 1)}
        steady["server_backlog_kib"] = backlog // 1024
        steady["stopped"] = stopped
        return st, peak, steady

    # ----------------------------------------------------------------------------------------

    def run_load(self, server, scen, userset, rate, calls, what, rtt=False, stop_on_failure=False):
        """One bounded SIPp load run against a freshly started server. Returns the figures."""
        run_dir = self._run_dir("%s-%s-%d" % (scen.key, what, rate), server)
        hold = scen.hold_ms or 0
        timeout_s = int(calls / rate + hold / 1000.0 + 30)
        if scen.hold_ms:
            limit = int(rate * (hold / 1000.0 + 2)) + 200
        else:
            limit = int(rate * 2) + 200
        server.start(os.path.join(run_dir, "srv"), userset, SERVER_CPU)
        uas = None
        uac = None
        recorder = None
        try:
            if self.perf and what == "fixed":
                # first round: where the time goes; second: the system calls made
                mode = "trace" if self.perf_round else "record"
                recorder = profiles.Recorder(server.pids(), run_dir, mode)
            if scen.uas:
                uas = self._start_uas(server, scen, userset, run_dir, calls, timeout_s + 10,
                                      max(10000, hold + 10000))
            argv = sipp.command(
                scen.uac, server.addr, self.uac_port, SIPP_CPU, run_dir, "uac", calls=calls,
                timeout_s=timeout_s, rate=rate, limit=limit, hold_ms=scen.hold_ms,
                inf=userset.callers_inf, keys=scen.keys, auth_uri=scen.auth_uri, rtt=rtt)
            c_before = server.counters()
            udp0 = procs.udp_counters()
            sys0 = procs.system_busy_ticks()
            uas_cpu0 = uas.cpu_seconds() if uas else 0.0
            threads0 = server.thread_ticks()
            cpu0 = server.cpu_split()
            t0 = time.monotonic()
            uac = sipp.Sipp("uac", argv, run_dir)
            st, drops, steady = self._monitor(uac, uas, server, timeout_s + 20, calls / rate,
                                              calls if stop_on_failure else None)
            t1 = time.monotonic()
            if recorder:
                recorder.stop()
            cpu1 = server.cpu_split()
            threads1 = server.thread_ticks()
            uas_cpu1 = uas.cpu_seconds() if uas else 0.0
            sys1 = procs.system_busy_ticks()
            udp1 = procs.udp_counters()
            server.check_alive("the %s run" % scen.key)
            c_after = server.counters()
            if uas:
                # it ends by itself after its last call (-m), else it is stopped
                uas.wait(0.5 if steady["stopped"] else 8)
            s_uac = uac.stats()
            s_uas = uas.stats() if uas else {}
        finally:
            if recorder:
                recorder.stop()
            for p in (uac, uas):
                if p is not None:
                    p.stop()
            server.stop()
        wall = t1 - t0
        user_s = (cpu1[0] - cpu0[0]) / procs.CLK_TCK
        cpu_s = user_s + (cpu1[1] - cpu0[1]) / procs.CLK_TCK
        ok = s_uac.get("successful", 0)
        failed = s_uac.get("failed", 0)
        sipp_cpu = uac.cpu_seconds() + (uas_cpu1 - uas_cpu0)
        busy = (sys1["tasks"] - sys0["tasks"]) / procs.CLK_TCK
        irq = (sys1["irq"] - sys0["irq"]) / procs.CLK_TCK

        res = {
            "server": server.key,
            "scenario": scen.key,
            "what": what,
            "rate": rate,
            "calls": calls,
            "sipp_exit": st,
            "successful": ok,
            "failed": failed,
            "unfinished": max(0, calls - ok - failed),
            "retransmissions": s_uac.get("retransmissions", 0) + s_uas.get("retransmissions", 0),
            "retransmissions_uas": s_uas.get("retransmissions", 0),
            "uas_failed": s_uas.get("failed", 0),
            "achieved_rate": s_uac.get("creation_rate"),
            "wall_s": round(wall, 2),
            "server_cpu_s": round(cpu_s, 3),
            "server_cpu_pct": round(100 * cpu_s / wall, 1) if wall else None,
            "cpu_ms_per_1000": round(cpu_s * 1000 / ok * 1000, 1) if ok else None,
            # the part spent in user space (the rest is the kernel: sockets, wake-ups, files)
            "user_ms_per_1000": round(user_s * 1000 / ok * 1000, 1) if ok else None,
            "sipp_cpu_pct": round(100 * sipp_cpu / wall, 1) if wall else None,
            # other processes of the machine (this script, a compiler...), and interrupt time
            "other_cpu_pct": round(100 * max(0.0, busy - cpu_s - sipp_cpu) / wall, 1) if wall else None,
            "irq_cpu_pct": round(100 * irq / wall, 1) if wall else None,
            "udp_errors": _delta(udp0, udp1),
            "socket_drops": drops,
            # CPU use while calls were being created (the averages above include the tail)
            "steady_server_cpu_pct": steady["server_pct"],
            "steady_sipp_cpu_pct": steady["sipp_pct"],
            # the most bytes seen waiting in the server's receive queue (it fell behind)
            "server_backlog_kib": steady["server_backlog_kib"],
            "stopped_early": steady["stopped"],
            "counters": _delta(c_before, c_after),
            "dir": run_dir,
            "_commands": {"server": server.argv, "uac": argv,
                          "uas": uas.argv if uas else None},
        }
        if recorder:
            res["_profile"] = recorder.report()
        if threads1:
            res["thread_cpu_s"] = {k: round((v - threads0.get(k, 0)) / procs.CLK_TCK, 2)
                                   for k, v in threads1.items()}
        if rtt:
            res["_rtt"] = sipp.rtt_values(run_dir, scen.rtt_prefix)
        if s_uac.get("failed") or res["unfinished"]:
            res["errors_tail"] = uac.errors_tail(6)
        return res

    # ----------------------------------------------------------------------------------------
    # fixed rate, A B A B

    def fixed_rate(self, servers, scen, userset, seconds, rounds):
        rate = scen.fixed_rate
        calls = int(rate * seconds)
        runs = {s.key: [] for s in servers}
        rtts = {s.key: [] for s in servers}
        profs = {}
        commands = {}
        if self.perf:
            rounds = max(rounds, 2)
        for r in range(rounds):
            self.perf_round = r
            for s in servers:
                self.log("  fixed rate %d/s, round %d/%d, %s ..." % (rate, r + 1, rounds, s.label))
                res = self.run_load(s, scen, userset, rate, calls, "fixed", rtt=True)
                rtts[s.key].extend(res.pop("_rtt", []))
                if "_profile" in res:
                    profs.setdefault(s.key, []).append(res.pop("_profile"))
                cmds = res.pop("_commands")
                res["counters"] = notable_counters(res["counters"])
                res["socket_drops"] = {k: v for k, v in res["socket_drops"].items() if v}
                if r == 0:
                    commands[s.key] = {k: self.show_command(v) for k, v in cmds.items() if v}
                runs[s.key].append(res)
                self.log("    %s CPU %.1f ms per 1,000 %s (%.0f%% of a core), %d ok, %d failed, "
                         "%d retransmissions" % (
                             s.label, res["cpu_ms_per_1000"] or -1, scen.unit,
                             res["server_cpu_pct"] or -1, res["successful"], res["failed"],
                             res["retransmissions"]))
        quantum = min([v for vals in rtts.values() for v in vals if v > 0] or [1.0])
        summary = {}
        for s in servers:
            vals = rtts[s.key]
            per = [x["cpu_ms_per_1000"] for x in runs[s.key] if x["cpu_ms_per_1000"] is not None]
            user = [x["user_ms_per_1000"] for x in runs[s.key] if x["user_ms_per_1000"] is not None]
            summary[s.key] = {
                "cpu_ms_per_1000_median": round(statistics.median(per), 1) if per else None,
                "cpu_ms_per_1000_runs": per,
                "user_ms_per_1000_median": round(statistics.median(user), 1) if user else None,
                "rtt_samples": len(vals),
                "rtt_p50_ms": percentile(vals, 50),
                "rtt_p99_ms": percentile(vals, 99),
                "rtt_max_ms": max(vals) if vals else None,
                "failed": sum(x["failed"] + x["unfinished"] for x in runs[s.key]),
                "retransmissions": sum(x["retransmissions"] for x in runs[s.key]),
                "calls": sum(x["calls"] for x in runs[s.key]),
            }
        return {"rate": rate, "calls_per_run": calls, "rounds": rounds, "seconds": seconds,
                "rtt_quantum_ms": quantum, "runs": runs, "summary": summary,
                "commands": commands, "_profiles": profs}

    def show_command(self, argv):
        """A command line with the work folder's paths shortened (for the report)."""
        out = []
        for a in argv:
            a = str(a)
            if a.startswith(self.workroot):
                a = os.path.basename(a)
            elif a.startswith(REPO + "/"):
                a = a[len(REPO) + 1:]
            elif a.startswith(sipp.SCENARIO_DIR):
                a = "bench/sipp/" + os.path.basename(a)
            out.append(a)
        return " ".join(shlex.quote(a) for a in out)

    # ----------------------------------------------------------------------------------------
    # highest sustained rate, server pinned to CPU 0 and SIPp to CPU 1

    @staticmethod
    def verdict(res):
        reasons = []
        ach = res["achieved_rate"]
        stop = res.get("stopped_early")
        if stop:
            reasons.append("stopped after %s s: %d retransmissions, %d failed" % (
                stop["after_s"], stop["retransmissions"], stop["failed"]))
            if ach is not None and ach < 0.97 * res["rate"]:
                reasons.append("calls created at %s/s only" % ach)
            return False, reasons
        total = res["calls"]
        bad = res["failed"] + res["unfinished"]
        if res["sipp_exit"] is None:
            reasons.append("SIPp hit its time limit")
        if bad * 1000 >= total:
            reasons.append("%d of %d failed or unfinished" % (bad, total))
        if res["retransmissions"]:
            reasons.append("%d retransmissions" % res["retransmissions"])
        if ach is None or ach < 0.97 * res["rate"]:
            reasons.append("calls created at %s/s only" % ach)
        return (not reasons), reasons

    def max_rate(self, server, scen, userset, probe_s, confirm_s, max_probes, confirm_tries):
        probes = []

        def probe(rate, seconds, what):
            rate = int(rate)
            res = self.run_load(server, scen, userset, rate, int(rate * seconds), what,
                                stop_on_failure=True)
            ok, reasons = self.verdict(res)
            res["pass"] = ok
            res["reasons"] = reasons
            probes.append(res)
            self.log("    %s %s %d/s for %d s: %s (CPU while loading: server %s%%, SIPp %s%%; "
                     "other processes %.0f%%%s)" % (
                         server.label, what, rate, seconds,
                         "pass" if ok else "FAIL: " + "; ".join(reasons),
                         res["steady_server_cpu_pct"], res["steady_sipp_cpu_pct"],
                         res["other_cpu_pct"] or 0, _counter_note(res)))
            return ok

        lo, hi = None, None
        rate = scen.start_rate
        n = 0
        # bracket: geometric steps
        while n < max_probes and (lo is None or hi is None):
            ok = probe(rate, probe_s, "probe")
            n += 1
            if ok:
                lo = rate
                if hi is None:
                    rate = rate * 2
            else:
                hi = rate
                if lo is None:
                    rate = max(10, rate // 2)
            if rate > 50000 or rate <= 10:
                break
        # bisection
        while n < max_probes and lo is not None and hi is not None and hi / lo > 1.12:
            mid = int(round((lo * hi) ** 0.5, -1)) or (lo + hi) // 2
            if probe(mid, probe_s, "probe"):
                lo = mid
            else:
                hi = mid
            n += 1
        # confirmation at the best probe rate; when it fails (a server may hold up for 10 s and
        # not for 30, e.g. when its transaction table fills), halve until a run passes, then
        # bisect between the passing and the failing rate while tries are left
        confirmed = None
        c_fail = None
        rate = lo
        tries = confirm_tries if lo is not None else 0
        while tries > 0 and rate and rate >= 10:
            tries -= 1
            if probe(rate, confirm_s, "confirm"):
                confirmed = rate
            else:
                c_fail = rate
            if confirmed is None:
                rate = rate // 2
            elif c_fail is None or c_fail / confirmed <= 1.2:
                break
            else:
                rate = int(round((confirmed * c_fail) ** 0.5, -1))
        # What limits the rate: look at the failing run just above the found rate.
        above = [p for p in probes if not p["pass"] and (confirmed is None or p["rate"] > confirmed)]
        limit_run = min(above, key=lambda p: (p["rate"], p["what"] != "confirm")) if above else None
        at = [p for p in probes if p["pass"] and p["rate"] == confirmed and p["what"] == "confirm"]
        at_run = at[-1] if at else None
        return {
            "rate": confirmed,
            "probe_s": probe_s,
            "confirm_s": confirm_s,
            "bracket": [lo, hi],
            # indexes into "probes": the passing 30 s run, the first failing run above it
            "at_rate": probes.index(at_run) if at_run else None,
            "limit_run": probes.index(limit_run) if limit_run else None,
            "bottleneck": _bottleneck(limit_run, at_run) if limit_run else "none found",
            "lower_bound": confirmed is not None and limit_run is None,
            "probes": [_brief(p) for p in probes],
        }

    # ----------------------------------------------------------------------------------------
    # memory

    def memory_contacts(self, server, userset, rate, settle_s):
        """Resident memory idle (users loaded) and after every user registered once: 6 s after
        the last REGISTER, and `settle_s` s after it (the registrations' transactions gone)."""
        n = userset.count
        run_dir = self._run_dir("memory-contacts-%d" % n, server)
        t0 = time.monotonic()
        server.start(os.path.join(run_dir, "srv"), userset, SERVER_CPU)
        start_s = time.monotonic() - t0
        reg = None
        try:
            time.sleep(2)
            idle = server.memory()
            timeout_s = int(n / rate + 60)
            reg = sipp.Sipp("register", sipp.command(
                "register.xml", server.addr, self.uac_port, SIPP_CPU, run_dir, "register",
                calls=n, timeout_s=timeout_s, rate=rate, limit=int(rate * 2) + 200,
                inf=userset.callers_inf, keys={"domain": DOMAIN, "expires": 3600},
                auth_uri=DOMAIN), run_dir)
            st = reg.wait(timeout_s + 20)
            server.check_alive("the registration of %d users" % n)
            stats = reg.stats()
            time.sleep(6)  # Kamailio's wait timer is 5 s
            early = server.memory()
            early_counters = server.counters()
            time.sleep(max(0, settle_s - 6))  # hedgewitch keeps non-INVITE transactions 32 s
            server.check_alive("the wait after registering %d users" % n)
            full = server.memory()
            contacts = server.contacts()
            counters = server.counters()
        finally:
            if reg is not None:
                reg.stop()
            server.stop()
        return {"users": n, "rate": rate, "sipp_exit": st, "start_s": round(start_s, 2),
                "registered_ok": stats.get("successful"), "failed": stats.get("failed"),
                "retransmissions": stats.get("retransmissions"), "contacts": contacts,
                "idle": idle, "after_6s": early, "counters_after_6s": early_counters,
                "settle_s": settle_s, "with_contacts": full, "counters": counters, "dir": run_dir}

    def memory_calls(self, server, userset, calls, rate):
        """Resident memory with `calls` calls established and held at the same time."""
        scen = SCENARIOS["call"]
        run_dir = self._run_dir("memory-calls-%d" % calls, server)
        ramp = calls / rate
        hold_ms = int((ramp + 60) * 1000)  # longer than the ramp plus the reading
        timeout_s = int(ramp + hold_ms / 1000 + 30)
        server.start(os.path.join(run_dir, "srv"), userset, SERVER_CPU)
        uas = uac = None
        try:
            time.sleep(1)
            idle = server.memory()
            uas = self._start_uas(server, scen, userset, run_dir, calls, timeout_s,
                                  hold_ms + 30000)
            uac = sipp.Sipp("uac", sipp.command(
                scen.uac, server.addr, self.uac_port, SIPP_CPU, run_dir, "uac", calls=calls,
                timeout_s=timeout_s, rate=rate, limit=calls + 100, hold_ms=hold_ms,
                inf=userset.callers_inf, keys=scen.keys, auth_uri=scen.auth_uri,
                recv_timeout_ms=hold_ms + 30000), run_dir)

            def all_up():
                s = uas.stats()
                return s.get("incoming", 0) >= calls or not uac.proc.alive()

            reached = procs.wait_until(all_up, ramp + 30, 0.5)
            if not uac.proc.alive():
                raise RunError("SIPp UAC of the %d-call test ended early: %s %s" % (
                    calls, uac.proc.tail(5), uac.errors_tail(5)))
            time.sleep(2)  # the last 200s and ACKs
            server.check_alive("the %d-call test" % calls)
            mem = server.memory()
            s_uac, s_uas = uac.stats(), uas.stats()
            counters = server.counters()
        finally:
            for p in (uac, uas):
                if p is not None:
                    p.stop()
            server.stop()
        return {"calls": calls, "rate": rate, "reached": reached,
                "established": s_uas.get("incoming"), "uac_current": s_uac.get("current"),
                "failed": s_uac.get("failed"), "retransmissions": s_uac.get("retransmissions"),
                "idle": idle, "with_calls": mem, "counters": counters, "dir": run_dir}


NOTABLE = ("overloaded", "dropped_datagrams", "auth_failures", "malformed_in",
           "core:drop_requests", "core:err_requests", "core:drop_replies", "core:err_replies",
           "sl:5xx_replies", "tm:5xx")


def notable_counters(c):
    return {k: v for k, v in (c or {}).items() if k in NOTABLE and v}


def _brief(p):
    """The figures of a probe kept in the results."""
    if p is None:
        return None
    keys = ("what", "rate", "pass", "reasons", "failed", "unfinished", "retransmissions",
            "achieved_rate", "steady_server_cpu_pct", "steady_sipp_cpu_pct", "server_backlog_kib",
            "cpu_ms_per_1000", "other_cpu_pct", "stopped_early")
    out = {k: p.get(k) for k in keys if p.get(k) is not None}
    c = notable_counters(p.get("counters"))
    if c:
        out["counters"] = c
    d = {k: v for k, v in (p.get("socket_drops") or {}).items() if v}
    if d:
        out["socket_drops"] = d
    return out


def _counter_note(res):
    c = res.get("counters") or {}
    notes = []
    for k in ("overloaded", "dropped_datagrams", "auth_failures", "malformed_in",
              "core:drop_requests", "sl:5xx_replies", "tm:5xx_replies"):
        if c.get(k):
            notes.append("%s +%d" % (k, c[k]))
    for k, v in (res.get("socket_drops") or {}).items():
        if v:
            notes.append("%s socket dropped %d datagrams" % (k, v))
    return ("; " + ", ".join(notes)) if notes else ""


def _bottleneck(limit_run, at_run):
    """Which side gave out at the first failing rate above the sustained one: the server (it
    answered 503, its socket overflowed or held a backlog of 256 KiB or more, or its core was
    85% busy) or SIPp (its core was busy or its sockets overflowed)."""
    r = limit_run or at_run
    if r is None:
        return "unknown"
    srv = r.get("steady_server_cpu_pct") or r.get("server_cpu_pct") or 0
    gen = r.get("steady_sipp_cpu_pct") or r.get("sipp_cpu_pct") or 0
    drops = r.get("socket_drops") or {}
    if (r.get("counters") or {}).get("overloaded"):
        return "server-503"
    if drops.get("server") or srv >= 85 or (r.get("server_backlog_kib") or 0) >= 256:
        return "server"
    if gen >= 85 or drops.get("uac") or drops.get("uas"):
        return "sipp"
    return "neither"
