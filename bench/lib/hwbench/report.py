"""BENCHMARKS.md side-by-side section and the small JSON of raw results."""

import json
import os

START = "<!-- side-by-side:start -->"
END = "<!-- side-by-side:end -->"

NAMES = (("hedgewitch", "hedgewitch"), ("kamailio", "Kamailio"))


def _n(x, digits=0):
    if x is None:
        return "—"
    if digits == 0:
        return "{:,}".format(int(round(x)))
    return "{:,.{d}f}".format(x, d=digits)


def _ratio(a, b, digits=2):
    if a is None or b is None or b == 0:
        return "—"
    return "{:.{d}f}".format(a / b, d=digits)


def _mib(kib):
    return None if kib is None else kib / 1024.0


def _clean(v):
    """SIPp's rtt file has values like 3.999 for one 4 ms step."""
    return round(v) if v is not None and abs(v - round(v)) < 0.01 else v


def _ms(v, quantum):
    if v is None:
        return "—"
    if v == 0:
        return "<%g ms" % _clean(quantum)
    return "%g ms" % _clean(v)


def _row(metric, h, k, ratio):
    return "| %s | %s | %s | %s |" % (metric, h, k, ratio)


def scenario_section(scen, res, settings):
    lines = ["### %s" % scen.title, "", "Flow: %s." % scen.flow, ""]
    lines += ["| metric | hedgewitch | Kamailio | ratio hedgewitch/Kamailio |",
              "|---|---:|---:|---:|"]
    notes = []
    fx = res.get("fixed")
    if fx:
        sh, sk = fx["summary"]["hedgewitch"], fx["summary"]["kamailio"]
        a, b = sh["cpu_ms_per_1000_median"], sk["cpu_ms_per_1000_median"]
        lines.append(_row(
            "server CPU (user+system) per 1,000 %s at %d/s, ms — lower is better"
            % (scen.unit, fx["rate"]), _n(a, 1), _n(b, 1), _ratio(a, b)))
        a, b = sh.get("user_ms_per_1000_median"), sk.get("user_ms_per_1000_median")
        lines.append(_row("… of which in user space (the rest is kernel time), ms",
                          _n(a, 1), _n(b, 1), _ratio(a, b)))
    mr = res.get("max_rate")
    if mr:
        h, k = mr["hedgewitch"], mr["kamailio"]

        def cell(m):
            if m["rate"] is None:
                return "not found"
            lower = m["bottleneck"] == "sipp" or m.get("lower_bound")
            return ("≥ " if lower else "") + _n(m["rate"])

        lines.append(_row(
            "highest rate sustained for %d s on one core (<0.1%% failed, no retransmission), "
            "%s/s — higher is better" % (h["confirm_s"], scen.unit),
            cell(h), cell(k), _ratio(h["rate"], k["rate"])))
    if fx:
        q = fx["rtt_quantum_ms"]
        for p in (50, 99):
            a, b = sh["rtt_p%d_ms" % p], sk["rtt_p%d_ms" % p]
            r = _ratio(a, b) if (a and b) else "—"
            lines.append(_row("response time p%d at %d/s (%s)" % (p, fx["rate"], scen.rtt_what),
                              _ms(a, q), _ms(b, q), r))
    mc = res.get("memory_contacts")
    if mc:
        h, k = mc["hedgewitch"], mc["kamailio"]
        n = _n(h["users"])
        a, b = _mib(h["idle"]["pss_kib"]), _mib(k["idle"]["pss_kib"])
        lines.append(_row("memory (PSS, all processes), idle with %s users loaded, MiB" % n,
                          _n(a, 1), _n(b, 1), _ratio(a, b)))
        a, b = _mib(h["with_contacts"]["pss_kib"]), _mib(k["with_contacts"]["pss_kib"])
        lines.append(_row("memory (PSS, all processes) with %s registered contacts, MiB (read "
                          "%d s after the last REGISTER)" % (n, h.get("settle_s", 6)),
                          _n(a, 1), _n(b, 1), _ratio(a, b)))
        lines.append(_row("hedgewitch resident set (VmRSS) with %s contacts, MiB" % n,
                          _n(_mib(h["with_contacts"].get("rss_kib")), 1), "n/a ¹", "—"))
    mcl = res.get("memory_calls")
    if mcl:
        h, k = mcl["hedgewitch"], mcl["kamailio"]
        n = _n(h["calls"])
        a, b = _mib(h["idle"]["pss_kib"]), _mib(k["idle"]["pss_kib"])
        lines.append(_row("memory (PSS, all processes), idle, MiB", _n(a, 1), _n(b, 1), _ratio(a, b)))
        a, b = _mib(h["with_calls"]["pss_kib"]), _mib(k["with_calls"]["pss_kib"])
        lines.append(_row("memory (PSS, all processes) with %s calls in progress, MiB" % n,
                          _n(a, 1), _n(b, 1), _ratio(a, b)))
        lines.append(_row("hedgewitch resident set (VmRSS) with %s calls in progress, MiB" % n,
                          _n(_mib(h["with_calls"].get("rss_kib")), 1), "n/a ¹", "—"))
    lines.append("")

    # notes
    if fx:
        for key, label in NAMES:
            s = fx["summary"][key]
            runs = fx["runs"][key]
            cpus = ", ".join(_n(x, 1) for x in s["cpu_ms_per_1000_runs"])
            notes.append("%s at %d/s: %d run(s) of %s %s (CPU per 1,000: %s ms); %d failed, %d "
                         "retransmissions; server at %s%% of a core, SIPp at %s%%." % (
                             label, fx["rate"], len(runs), _n(fx["calls_per_run"]), scen.unit,
                             cpus, s["failed"], s["retransmissions"],
                             _n(_median([r["server_cpu_pct"] for r in runs]), 0),
                             _n(_median([r["sipp_cpu_pct"] for r in runs]), 0)))
        th = {}
        for r in fx["runs"]["hedgewitch"]:
            for k, v in (r.get("thread_cpu_s") or {}).items():
                th[k] = th.get(k, 0) + v
        tot = sum(th.values())
        if tot > 0:
            names = {"hedgewitch": "thread `hedgewitch` (SIP)",
                     "store": "thread `store` (SQLite writer)"}
            notes.append("hedgewitch's CPU by thread at %d/s: %s." % (fx["rate"], ", ".join(
                "%s %d%%" % (names.get(k, "thread `%s`" % k), round(100 * v / tot))
                for k, v in sorted(th.items(), key=lambda kv: -kv[1]))))
    if mr:
        for key, label in NAMES:
            m = mr[key]
            notes.append("%s highest rate: %s" % (label, _maxrate_note(m, scen)))
    if mc:
        for key, label in NAMES:
            m = mc[key]
            early = m.get("after_6s") or {}
            c6 = m.get("counters_after_6s") or {}
            c = m.get("counters") or {}
            s = ("%s: %s of %s users registered at %s/s (%s failed, %s retransmissions); the "
                 "server reported %s contacts; %d process(es). PSS 6 s after the last REGISTER: "
                 "%s MiB" % (label, _n(m["registered_ok"]), _n(m["users"]), _n(m["rate"]),
                             _n(m["failed"]), _n(m["retransmissions"]), _n(m["contacts"]),
                             m["with_contacts"]["processes"], _n(_mib(early.get("pss_kib")), 1)))
            if key == "hedgewitch":
                s += " (%s server transactions then, %s at the reading)" % (
                    _n(c6.get("server_transactions")), _n(c.get("server_transactions")))
            else:
                s += " (%s transactions then, %s at the reading); shared memory in use at the " \
                     "reading %s MiB, at most %s MiB during the test: the pages a burst of " \
                     "transactions touched stay resident in Kamailio's shared memory pool" % (
                         _n(c6.get("tm:current")), _n(c.get("tm:current")),
                         _n(_mib((c.get("shmem:real_used_size") or 0) / 1024.0), 1),
                         _n(_mib((c.get("shmem:max_used_size") or 0) / 1024.0), 1))
            notes.append(s + ".")
    if mcl:
        for key, label in NAMES:
            m = mcl[key]
            c = m.get("counters") or {}
            state = ""
            if key == "hedgewitch":
                state = "; its state then: %s server transactions, %s client transactions, " \
                        "%s proxy contexts" % (_n(c.get("server_transactions")),
                                               _n(c.get("client_transactions")),
                                               _n(c.get("proxy_contexts")))
            elif "tm:current" in c:
                state = "; its transactions then: %s (%s waiting); shared memory in use %s MiB" % (
                    _n(c.get("tm:current")), _n(c.get("tm:waiting")),
                    _n(_mib((c.get("shmem:real_used_size") or 0) / 1024.0), 1))
            notes.append("%s: %s calls established at %s/s and held (%s failed)%s." % (
                label, _n(m["established"]), _n(m["rate"]), _n(m["failed"]), state))
    if notes:
        lines += ["Notes:", ""] + ["- " + n for n in notes] + [""]
    if fx and fx.get("commands"):
        lines += ["<details><summary>Commands of the fixed-rate runs</summary>", ""]
        for key, label in NAMES:
            c = fx["commands"].get(key) or {}
            if c.get("server"):
                lines += ["%s:" % label, "", "```", c["server"], "```", ""]
        c = fx["commands"].get("hedgewitch") or {}
        for what, text in (("uas", "SIPp UAS (after registering the callee from its port)"),
                           ("uac", "SIPp UAC")):
            if c.get(what):
                lines += ["%s (the same against Kamailio's port):" % text, "", "```", c[what],
                          "```", ""]
        lines += ["</details>", ""]
    return lines


def _median(v):
    v = sorted(x for x in v if x is not None)
    if not v:
        return None
    m = len(v) // 2
    return v[m] if len(v) % 2 else (v[m - 1] + v[m]) / 2


def _probe(m, key):
    i = m.get(key)
    if isinstance(i, int) and 0 <= i < len(m["probes"]):
        return m["probes"][i]
    return i if isinstance(i, dict) else None


def _maxrate_note(m, scen):
    probes = ", ".join("%s%s%s" % (_n(p["rate"]), "" if p["what"] == "probe" else " (%d s)" % m[
        "confirm_s"], "✓" if p["pass"] else "✗") for p in m["probes"])
    if m["rate"] is None:
        fails = [p for p in m["probes"] if p["what"] == "confirm" and not p["pass"]]
        s = "no %d s run passed" % m["confirm_s"]
        if fails:
            f = fails[-1]
            s += "; at %s/s: %s (server %s%%, SIPp %s%%%s)" % (
                _n(f["rate"]), "; ".join(f.get("reasons") or []),
                _n(f.get("steady_server_cpu_pct")), _n(f.get("steady_sipp_cpu_pct")),
                _counters_text(f))
        return s + ". Runs: " + probes + "."
    s = "%s %s/s held for %d s" % (_n(m["rate"]), scen.unit, m["confirm_s"])
    at = _probe(m, "at_rate") or {}
    if at:
        s += " (CPU while loading: server %s%% of its core, SIPp %s%% of its core)" % (
            _n(at.get("steady_server_cpu_pct")), _n(at.get("steady_sipp_cpu_pct")))
    lim = _probe(m, "limit_run")
    if lim:
        s += "; at %s/s: %s (server %s%%, SIPp %s%%%s)" % (
            _n(lim["rate"]), "; ".join(lim.get("reasons") or []),
            _n(lim.get("steady_server_cpu_pct")), _n(lim.get("steady_sipp_cpu_pct")),
            _counters_text(lim))
    b = m.get("bottleneck")
    if b == "sipp":
        s += ". SIPp gave out first (its core busy or its sockets overflowing): the figure is a " \
             "lower bound for the server"
    elif b == "server":
        s += ". The server gave out (its core busy, or datagrams piling up or dropped at its socket)"
    elif b == "server-503":
        s += ". The server refused with 503 (its `overloaded` counter: hedgewitch answers 503 " \
             "when its table of server transactions is full)"
    elif b == "neither":
        s += ". Neither side's core was saturated nor a socket overflowing"
    elif m.get("lower_bound"):
        s += ". No probe failed within the probe budget: the figure is a lower bound"
    return s + ". Runs: " + probes + "."


def _counters_text(r):
    c = r.get("counters") or {}
    parts = []
    for k in ("overloaded", "dropped_datagrams", "auth_failures", "malformed_in",
              "core:drop_requests", "core:err_requests", "sl:5xx_replies", "tm:5xx"):
        if c.get(k):
            parts.append("%s +%s" % (k, _n(c[k])))
    for k, v in (r.get("socket_drops") or {}).items():
        if v:
            parts.append("%s socket dropped %s datagrams" % ({"server": "the server's",
                         "uac": "SIPp UAC's", "uas": "SIPp UAS's"}.get(k, k), _n(v)))
    if (r.get("server_backlog_kib") or 0) >= 64:
        parts.append("up to %s KiB waiting at the server's socket" % _n(r["server_backlog_kib"]))
    return ("; " + ", ".join(parts)) if parts else ""


def section(results, scenarios):
    s = results["settings"]
    m = results["machine"]
    v = results["versions"]
    lines = [START, "## hedgewitch and Kamailio side by side", ""]
    kind = results["mode"] + (" (only %s)" % ", ".join(results["only"]) if results.get("partial") else "")
    lines.append("Written by `%s` on %s (%s run, %s min wall time). Benchmarks are not tests: "
                 "figures from one machine, to compare the two servers under the same load, "
                 "not absolute capacities." % (results["command"], results["date"], kind,
                                             _n(results["wall_time_s"] / 60.0, 1)))
    lines.append("")
    lines.append("- Machine: %s CPUs (%s), %s GiB, Linux %s; load average at start %s." % (
        m["nproc"], m["cpu_model"], m["mem_gib"], m["kernel"],
        " ".join("%.2f" % x for x in m.get("loadavg_start", []))))
    lines.append("- hedgewitch %s, git %s." % (v["hedgewitch"], v["hedgewitch_git"]))
    lines.append("- %s; %s." % (v["kamailio"], v["sipp"]))
    lines.append("- Kamailio: `%s`: %d UDP worker(s) (`-n`), %d MiB shared memory (`-m`), "
                 "%d MiB private memory per process (`-M`), users' HA1 in %s. See Method." % (
                     s["kamailio_command"], s["kamailio_children"], s["kamailio_shm_mb"],
                     s["kamailio_pkg_mb"],
                     "an in-memory hash table (htable, loaded from db_text)"
                     if s["kamailio_auth"] == "htable" else "db_text via auth_db"))
    lines.append("- hedgewitch: `%s` (UDP only, log level warn, users imported with "
                 "`hedgewitch user import`)." % s["hedgewitch_command"])
    lines.append("")
    for key in results["scenarios"]:
        lines += scenario_section(scenarios[key], results["scenarios"][key], s)
    lines += method(results)
    lines.append(END)
    return "\n".join(lines) + "\n"


def method(results):
    s = results["settings"]
    return [
        "### Method",
        "",
        "- Reproduce with `%s` (full run: about 25 minutes; `bench/run --quick` for a short one, "
        "`bench/run --only call` for one scenario). It builds hedgewitch in release mode, "
        "installs `sip-tester` and `kamailio` from Debian's packages when missing, writes the "
        "Kamailio configuration from `bench/kamailio/kamailio.cfg.in`, and runs the SIPp "
        "scenarios of `bench/sipp/` against each server in turn, on 127.0.0.1 only. Raw figures: "
        "`bench/results/latest.json`; details in `bench/README.md`." % results["command"],
        "- Every run starts a fresh server pinned to CPU 0 (`taskset -c 0`, all its processes or "
        "threads) with SIPp (UAC and, for calls and messages, a UAS registered as the callee) "
        "pinned to CPU 1. Every SIPp run is bounded by a call count (`-m`) and a timeout.",
        "- CPU per 1,000: utime+stime (fields 14 and 15 of `/proc/PID/stat`) of every process of "
        "the server (hedgewitch: its one process, both threads; Kamailio: the main process and "
        "every process forked from it), read just before the SIPp UAC starts and just after it "
        "ends, divided by the successful %s. Fixed rate runs: %d s each, %d round(s) alternating "
        "hedgewitch, Kamailio, hedgewitch, Kamailio...; the table gives the median. The "
        "user-space part (utime) is shown too: at these rates most of either server's CPU is "
        "kernel time in its socket calls, much of it waking the idle SIPp core (costly on a "
        "virtual machine), which says more about the machine than about the server." % (
            "registrations/calls/messages", s["fixed_seconds"], s["fixed_rounds"]),
        "- Response times: SIPp's own `-trace_rtt` (one value per call) for the timed step of "
        "each scenario (`start_rtd`/`rtd` on the authenticated request and its final "
        "response), pooled over the fixed-rate runs, nearest-rank percentiles. SIPp's clock "
        "advances in steps (here %g ms): a reading of 0 is shown as \"<%g ms\", and a reading of "
        "N ms means between N and N+%g ms." % ((_clean(s.get("rtt_quantum_ms") or 1),) * 3),
        "- Highest rate: probes of %d s (doubling or halving from a start rate, then bisection; "
        "at most %d probes), then a %d s run at the best passing rate (if it fails: halving until "
        "a run passes, then bisection; up to %d such runs). A run passes with fewer than 0.1%% failed or unfinished calls, no "
        "retransmission (SIPp's `Retransmissions(C)`, UAC and UAS) and calls created at 97%% of "
        "the asked rate or better. Server and SIPp CPU use are recorded; when SIPp's core is "
        "saturated first the figure is marked ≥ (the load generator, not the server, is the "
        "limit)." % (s["probe_seconds"], s["max_probes"], s["confirm_seconds"], s["confirm_tries"]),
        "- Memory: PSS (`Pss:` of `/proc/PID/smaps_rollup`) summed over the server's processes, "
        "so that Kamailio's shared memory is counted once; for hedgewitch also VmRSS. "
        "¹ Kamailio's RSS counts its shared memory segment in every process, so a sum of RSS "
        "means nothing. Contacts: every user registered once (Expires 3600) from an injection "
        "file at %d/s, read %d s after the last REGISTER (hedgewitch keeps a finished non-INVITE "
        "transaction 32 s, Kamailio 5 s). Calls in progress: calls placed at %d/s and "
        "held (no BYE) while the memory is read." % (
            s["memory_reg_rate"], s["memory_settle_s"], s["memory_calls_rate"]),
        "- Kamailio configuration: the same work as hedgewitch: stateful (`t_newtran`) before "
        "digest authentication with qop=auth and nonce-count checks (like hedgewitch's replay "
        "protection), stored HA1, REGISTER challenged with 401 and requests from local users "
        "with 407, `save(\"location\")` to an in-memory location table (usrloc db_mode 0), "
        "`record_route()` for INVITE, `lookup(\"location\")` then `t_relay()`, in-dialog "
        "requests by `loose_route()`, no TCP, no dialog module. The users' HA1 are loaded at "
        "start-up from db_text into an htable (`pv_auth_check`): db_text's own queries (auth_db) "
        "scan the table row by row, about 7 ms per REGISTER with 100,000 users, which would "
        "measure db_text rather than Kamailio; `bench/run --kamailio-auth auth_db` runs that way.",
        "- Kamailio workers: `-n %d`. With the server on one core, %s" % (
            s["kamailio_children"], s["kamailio_children_reason"]),
        "",
    ]


def write_markdown(path, text):
    """Replaces the section between the markers (or appends it), leaving the rest alone."""
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if START in old and END in old:
        pre = old[:old.index(START)]
        post = old[old.index(END) + len(END):]
        if post.startswith("\n"):
            post = post[1:]
        new = pre + text + post
    elif old:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        new = "# Benchmarks\n\n" + text
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, path)


def strip_private(obj):
    """The JSON keeps figures, not file paths of the work folder or raw samples."""
    if isinstance(obj, dict):
        return {k: strip_private(v) for k, v in obj.items()
                if not k.startswith("_") and k not in ("dir", "errors_tail")}
    if isinstance(obj, list):
        return [strip_private(x) for x in obj]
    return obj


def _dump(obj, indent=0):
    """JSON with one line per small object (a run, a probe): short and diff-friendly."""
    flat = json.dumps(obj, ensure_ascii=False)
    if len(flat) <= 160 or not isinstance(obj, (dict, list)) or not obj:
        return flat
    pad = " " * (indent + 1)
    if isinstance(obj, list):
        items = [pad + _dump(x, indent + 1) for x in obj]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    if indent >= 6 or all(not isinstance(v, (dict, list)) or len(json.dumps(v)) < 60
                          for v in obj.values()):
        return flat
    items = [pad + json.dumps(k) + ": " + _dump(v, indent + 1) for k, v in obj.items()]
    return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"


def write_json(path, results):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(_dump(strip_private(results)))
        f.write("\n")
    os.replace(tmp, path)
