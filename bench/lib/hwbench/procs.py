"""Child processes and /proc readings.

Every process the benchmark starts goes through `Proc`, which puts it in its own session (so a
Ctrl-C in the terminal reaches only bench/run, which then stops its children in order) and keeps
it in a registry; `stop_all()` stops whatever is still running, by process group of the child
that bench/run started itself. Reaping uses wait4(), which also gives the exact CPU time of a
child that has exited (SIPp's own CPU use).
"""

import os
import signal
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")

_REGISTRY = []


class Proc:
    """A child process with its output in files, bounded waits and a sure stop."""

    def __init__(self, name, argv, logdir, cwd=None, env=None, stdin_data=None, quiet_stdout=False):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.out_path = os.path.join(logdir, name + ".out")
        self.err_path = os.path.join(logdir, name + ".err")
        out = open(os.devnull, "wb") if quiet_stdout else open(self.out_path, "wb")
        err = open(self.err_path, "wb")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        finally:
            out.close()
            err.close()
        self.pid = self.popen.pid
        self.status = None
        self.rusage = None
        self.started = time.monotonic()
        self.ended = None
        _REGISTRY.append(self)
        if stdin_data is not None:
            try:
                self.popen.stdin.write(stdin_data.encode())
                self.popen.stdin.close()
            except OSError:
                pass

    def poll(self):
        """The exit code once the process has ended (reaped with its rusage), else None."""
        if self.status is not None:
            return self.status
        try:
            pid, st, ru = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, st, ru = self.pid, 0, None
        if pid == 0:
            return None
        self.status = os.waitstatus_to_exitcode(st) if ru is not None else -1
        self.rusage = ru
        self.ended = time.monotonic()
        self.popen.returncode = self.status
        if self in _REGISTRY:
            _REGISTRY.remove(self)
        return self.status

    def alive(self):
        return self.poll() is None

    def wait(self, timeout):
        """Waits up to `timeout` s; on the deadline stops the process and returns None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.poll()
            if st is not None:
                return st
            time.sleep(0.05)
        self.stop()
        return None

    def signal_group(self, sig):
        if self.poll() is None:
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, grace=8.0):
        """SIGTERM to the child's process group, SIGKILL after `grace` s; always reaps."""
        if self.poll() is not None:
            return self.status
        self.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.poll() is not None:
                return self.status
            time.sleep(0.05)
        self.signal_group(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.poll() is not None:
                break
            time.sleep(0.05)
        return self.status

    def cpu_seconds(self):
        """User+system CPU of this process (all its threads)."""
        if self.rusage is not None:
            return self.rusage.ru_utime + self.rusage.ru_stime
        t = cpu_ticks([self.pid])
        return t / CLK_TCK

    def tail(self, n=30, which="err"):
        path = self.err_path if which == "err" else self.out_path
        try:
            with open(path, "rb") as f:
                data = f.read()[-20000:].decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(data.splitlines()[-n:])


def stop_all():
    """Stops every child still running, newest first."""
    for p in list(reversed(_REGISTRY)):
        try:
            p.stop(grace=4.0)
        except Exception:  # noqa: BLE001 - cleanup must go on
            pass


def run(name, argv, logdir, timeout, cwd=None, env=None, stdin_data=None):
    """Runs a command to its end within `timeout` s. Returns (exit code or None, stdout, stderr)."""
    p = Proc(name, argv, logdir, cwd=cwd, env=env, stdin_data=stdin_data)
    st = p.wait(timeout)
    with open(p.out_path, "rb") as f:
        out = f.read().decode(errors="replace")
    with open(p.err_path, "rb") as f:
        err = f.read().decode(errors="replace")
    return st, out, err


# --------------------------------------------------------------------------------------------
# /proc readings


def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name: index 0 is field 3 (state)."""
    with open("/proc/%d/stat" % pid, "rb") as f:
        data = f.read().decode(errors="replace")
    return data[data.rindex(")") + 2:].split()


def cpu_ticks(pids):
    """utime+stime (fields 14 and 15 of /proc/PID/stat, clock ticks) summed over `pids`.

    A process's line covers all its threads. Processes that have gone away count 0."""
    total = 0
    for pid in pids:
        try:
            f = _stat_fields(pid)
        except (OSError, ValueError):
            continue
        total += int(f[11]) + int(f[12])
    return total


def cpu_ticks_split(pids):
    """(utime, stime) summed over `pids`, clock ticks."""
    u = s = 0
    for pid in pids:
        try:
            f = _stat_fields(pid)
        except (OSError, ValueError):
            continue
        u += int(f[11])
        s += int(f[12])
    return u, s


def thread_ticks(pid):
    """utime+stime per thread name (comm) of one process."""
    out = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                name = f.read().strip()
            with open("/proc/%d/task/%s/stat" % (pid, tid), "rb") as f:
                data = f.read().decode(errors="replace")
            fields = data[data.rindex(")") + 2:].split()
        except (OSError, ValueError):
            continue
        out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def process_tree(root):
    """`root` and all its descendants (by the ppid chain in /proc/*/stat)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            f = _stat_fields(int(d))
        except (OSError, ValueError):
            continue
        children.setdefault(int(f[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if not os.path.exists("/proc/%d" % p):
            continue
        out.append(p)
        todo.extend(children.get(p, []))
    return sorted(out)


def _proc_kb(path, key):
    """The kB figure of `key:` in a /proc file, 0 when the process is gone."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def smaps_kb(pid, key="Pss"):
    return _proc_kb("/proc/%d/smaps_rollup" % pid, key)


def status_kb(pid, key="VmRSS"):
    return _proc_kb("/proc/%d/status" % pid, key)


def system_busy_ticks():
    """Clock ticks of the whole machine from /proc/stat: "tasks" (user, nice, system: time of
    processes) and "irq" (irq and softirq: for loopback UDP mostly the delivery of datagrams)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal ...
                return {"tasks": v[0] + v[1] + v[2], "irq": v[5] + v[6]}
    return {"tasks": 0, "irq": 0}


def udp_counters():
    """Machine-wide UDP counters (InErrors, RcvbufErrors, SndbufErrors) from /proc/net/snmp."""
    try:
        with open("/proc/net/snmp") as f:
            lines = [l.split() for l in f if l.startswith("Udp:")]
        names, values = lines[0][1:], lines[1][1:]
        d = dict(zip(names, (int(x) for x in values)))
        return {k: d.get(k, 0) for k in ("InErrors", "RcvbufErrors", "SndbufErrors")}
    except (OSError, IndexError, ValueError):
        return {}


def udp_socket_state(ports):
    """For the UDP sockets bound to `ports` on 127.0.0.1, from /proc/net/udp: datagrams the
    kernel dropped (last column: receive buffer full) and bytes waiting in the receive queue,
    as {port: (drops, rx_queue)}."""
    want = {"0100007F:%04X" % p: p for p in ports}
    out = {p: (0, 0) for p in ports}
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) > 12 and parts[1] in want:
                    d, q = out[want[parts[1]]]
                    out[want[parts[1]]] = (d + int(parts[-1]), q + int(parts[4].split(":")[1], 16))
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    return out


def udp_port_bound(port, host="127.0.0.1"):
    want = {"%s:%04X" % ("0100007F" if host == "127.0.0.1" else "00000000", port), "00000000:%04X" % port}
    try:
        with open("/proc/net/udp") as f:
            next(f)
            return any(line.split()[1] in want for line in f)
    except (OSError, StopIteration, IndexError):
        return False


# Ports of the benchmark: below the kernel's ephemeral range (32768..) and below the range the
# project's end-to-end tests draw from (20000..32000), so that a test suite running at the same
# time does not take them.
PORT_RANGE = (15060, 19999)


def port_free(port, host="127.0.0.1"):
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return not udp_port_bound(port, host)


def free_udp_ports(count, start=PORT_RANGE[0], end=PORT_RANGE[1], host="127.0.0.1", exclude=()):
    """`count` ports free for UDP and TCP on `host`, from `start` on."""
    found = []
    port = start
    while len(found) < count and port < end:
        if port not in exclude and port_free(port, host):
            found.append(port)
        port += 1
    if len(found) < count:
        raise RuntimeError("not enough free ports in %d..%d" % (start, end))
    return found


def wait_until(cond, timeout, step=0.1):
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return []


def install_signal_handlers():
    """Ctrl-C, SIGTERM and SIGHUP end bench/run through KeyboardInterrupt, so the `finally`
    blocks stop the children."""

    def handler(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)
