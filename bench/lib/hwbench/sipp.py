"""SIPp runs: command lines, bounded processes, and SIPp's own statistics (stat and rtt files)."""

import glob
import os
import subprocess

from . import procs
from .servers import HOST, BENCH_DIR, taskset

SCENARIO_DIR = os.path.join(BENCH_DIR, "sipp")

# From /work/shared/reference/peers.md: with several proxy workers a 180 can overtake its 200;
# the load runs must not abort calls on such an unexpected message.
LOAD_FLAGS = ["-default_behaviors", "all,-abortunexp"]

# Socket buffers of SIPp and of both servers (hedgewitch asks for 4 MiB itself; Kamailio gets
# maxbuffer in its configuration). The kernel caps them at net.core.rmem_max / wmem_max.
SOCKET_BUFFER = int(os.environ.get("HWB_BUF", 4 * 1024 * 1024))


def sipp_version():
    try:
        out = subprocess.run(["sipp", "-v"], capture_output=True, text=True, timeout=20)
        for line in (out.stdout + out.stderr).splitlines():
            if "SIPp v" in line:
                return line.strip().rstrip(".")
    except (OSError, subprocess.SubprocessError):
        pass
    return "?"


def command(scenario, server_addr, local_port, cpu, run_dir, name, calls, timeout_s, rate=None,
            limit=None, hold_ms=None, inf=None, keys=None, auth_uri=None, recv_timeout_ms=10000,
            stats=True, rtt=False):
    """A SIPp command line, bounded by a call count (-m) and a global timeout (-timeout)."""
    argv = taskset(cpu) + [
        "sipp", "-sf", os.path.join(SCENARIO_DIR, scenario), server_addr,
        "-i", HOST, "-mi", HOST, "-p", str(local_port),
        "-m", str(calls), "-nostdin",
        "-timeout", "%ds" % timeout_s, "-timeout_error",
        "-recv_timeout", str(recv_timeout_ms),
        "-trace_err", "-error_file", os.path.join(run_dir, name + "_errors.log"),
        "-max_log_size", "2000000",
        # SIPp's default socket buffers (64 KiB) overflow in the bursts of its rate pacing:
        # the datagrams it then loses would count as retransmissions of the server.
        "-buff_size", str(SOCKET_BUFFER),
    ] + LOAD_FLAGS
    if rate is not None:
        argv += ["-r", str(rate)]
    if limit is not None:
        argv += ["-l", str(limit)]
    if hold_ms is not None:
        argv += ["-d", str(hold_ms)]
    if inf:
        argv += ["-inf", inf]
    for k, v in (keys or {}).items():
        argv += ["-key", k, str(v)]
    if auth_uri:
        argv += ["-auth_uri", auth_uri]
    if stats:
        argv += ["-trace_stat", "-stf", os.path.join(run_dir, name + "_stat.csv"), "-fd", "1"]
    if rtt:
        argv += ["-trace_rtt", "-rtt_freq", "1"]
    return argv


class Sipp:
    """One SIPp process of a run, in its own folder (SIPp writes its rtt file to its cwd)."""

    def __init__(self, name, argv, run_dir):
        self.name = name
        self.run_dir = run_dir
        self.argv = argv
        self.proc = procs.Proc(name, argv, run_dir, cwd=run_dir, quiet_stdout=True)

    def wait(self, timeout):
        return self.proc.wait(timeout)

    def stop(self):
        self.proc.stop(grace=3.0)

    def cpu_seconds(self):
        return self.proc.cpu_seconds()

    def stats(self):
        return read_stat(os.path.join(self.run_dir, self.name + "_stat.csv"))

    def errors_tail(self, n=15):
        path = os.path.join(self.run_dir, self.name + "_errors.log")
        try:
            with open(path, "rb") as f:
                data = f.read()[-8000:].decode(errors="replace")
            return "\n".join(data.splitlines()[-n:])
        except OSError:
            return ""


def _epoch(field):
    """SIPp time fields look like "2026-11-23\t01:34:47.410768\t1795397687.410768"."""
    try:
        return float(field.split("\t")[-1])
    except (ValueError, IndexError):
        return None


def read_stat(path):
    """SIPp's -trace_stat file: the last row's counters and the call-generation rate.

    Returns a dict with calls created, successful, failed, retransmissions, current calls,
    elapsed seconds, and `generation_s` (when the last new call was created, interpolated
    between the 1 s rows), or {} when the file is missing."""
    try:
        with open(path) as f:
            lines = [l.rstrip("\n") for l in f if l.strip()]
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    head = lines[0].split(";")
    rows = [dict(zip(head, l.split(";"))) for l in lines[1:]]

    def num(row, key):
        try:
            return int(row.get(key, "0") or 0)
        except ValueError:
            try:
                return float(row.get(key))
            except (TypeError, ValueError):
                return 0

    last = rows[-1]
    start = _epoch(last.get("StartTime", ""))
    out = {
        "outgoing": num(last, "OutgoingCall(C)"),
        "incoming": num(last, "IncomingCall(C)"),
        "created": num(last, "TotalCallCreated"),
        "current": num(last, "CurrentCall"),
        "successful": num(last, "SuccessfulCall(C)"),
        "failed": num(last, "FailedCall(C)"),
        "retransmissions": num(last, "Retransmissions(C)"),
        "unexpected": num(last, "FailedUnexpectedMessage(C)"),
        "max_udp_retrans": num(last, "FailedMaxUDPRetrans(C)"),
        "timeout_on_recv": num(last, "FailedTimeoutOnRecv(C)"),
        "out_of_call": num(last, "OutOfCallMsgs(C)"),
        "dead_call": num(last, "DeadCallMsgs(C)"),
        "watchdog_major": num(last, "WatchdogMajor(C)"),
        "watchdog_minor": num(last, "WatchdogMinor(C)"),
    }
    end = _epoch(last.get("CurrentTime", ""))
    out["elapsed_s"] = round(end - start, 3) if (start and end) else None
    # The call-creation rate: calls created by the last 1 s row before the count was complete,
    # over the time since the start (the last few calls of a run show up only in the next row,
    # so a rate taken at the end would be too low); short runs: interpolated at the end.
    total = out["created"]
    rate = None
    prev_t, prev_n = start, 0
    for r in rows:
        t = _epoch(r.get("CurrentTime", ""))
        n = num(r, "TotalCallCreated")
        if t is None or not start:
            continue
        if n >= total and total > 0:
            if prev_n >= total / 2 and prev_t > start:
                rate = prev_n / (prev_t - start)
            elif n > prev_n and t > prev_t:
                rate = total / (prev_t - start + (t - prev_t) * (total - prev_n) / (n - prev_n))
            break
        prev_t, prev_n = t, n
    out["creation_rate"] = round(rate, 1) if rate else None
    return out


def rtt_values(run_dir, prefix):
    """Response times (ms) of SIPp's -trace_rtt file(s) of one scenario in `run_dir`."""
    values = []
    for path in glob.glob(os.path.join(run_dir, prefix + "_*_rtt.csv")):
        with open(path) as f:
            for line in f:
                parts = line.strip().split(";")
                if len(parts) >= 2 and parts[0] != "Date_ms":
                    try:
                        values.append(float(parts[1]))
                    except ValueError:
                        pass
    return values
