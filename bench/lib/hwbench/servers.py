"""The two servers under test: start (pinned), readiness, CPU, memory, counters, stop."""

import json
import os
import re
import secrets
import shutil
import subprocess
import time

from . import procs
from .users import DOMAIN

HOST = "127.0.0.1"
BENCH_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KAMAILIO_TEMPLATE = os.path.join(BENCH_DIR, "kamailio", "kamailio.cfg.in")
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"


def taskset(cpu):
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


class ServerError(RuntimeError):
    pass


class Server:
    """A server instance: started fresh for each measurement, in its own folder."""

    key = ""
    label = ""

    def __init__(self, port):
        self.port = port
        self.proc = None
        self.dir = None

    @property
    def addr(self):
        return "%s:%d" % (HOST, self.port)

    def pids(self):
        raise NotImplementedError

    def cpu_ticks(self):
        return procs.cpu_ticks(self.pids())

    def cpu_split(self):
        return procs.cpu_ticks_split(self.pids())

    def thread_ticks(self):
        return {}

    def memory(self):
        """PSS summed over the server's processes (shared memory counted once), and RSS."""
        pids = self.pids()
        return {
            "processes": len(pids),
            "pss_kib": sum(procs.smaps_kb(p, "Pss") for p in pids),
            "rss_sum_kib": sum(procs.status_kb(p, "VmRSS") for p in pids),
        }

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def stop(self):
        if self.proc is not None:
            self.proc.stop(grace=10.0)
        self.proc = None

    def check_alive(self, what):
        if not self.alive():
            raise ServerError("%s died during %s; log tail:\n%s"
                              % (self.label, what, self.proc.tail(40) if self.proc else ""))


class Hedgewitch(Server):
    key = "hedgewitch"
    label = "hedgewitch"

    def __init__(self, binary, port):
        super().__init__(port)
        self.binary = binary
        self.config = None
        self.templates = {}

    def _write_config(self, folder, data_dir):
        path = os.path.join(folder, "hedgewitch.toml")
        with open(path, "w") as f:
            f.write('domain = "%s"\n' % DOMAIN)
            f.write('data_dir = "%s"\n' % data_dir)
            # UDP only, like the Kamailio instance (disable_tcp=yes): the load is UDP.
            f.write('listen = ["udp:%s:%d"]\n' % (HOST, self.port))
            f.write('stun = []\n')
            f.write('log = "warn"\n\n[registrar]\nmin_expires = 60\n\n[auth]\nalgorithms = ["MD5"]\n')
            # The load generators are trusted: they send far more than one source may (Kamailio
            # has no such limit configured either).
            f.write('\n[security]\ntrusted = ["%s/8"]\n' % HOST)
        return path

    def cli(self, args, logdir, timeout=60, config=None):
        return procs.run("hedgewitch-cli", [self.binary, "-c", config or self.config] + list(args),
                         logdir, timeout)

    def prepare(self, userset, workroot):
        """A data folder with the user set imported once; each start copies it."""
        if userset.name in self.templates:
            return
        folder = os.path.join(workroot, "hedgewitch-data-" + userset.name)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        data = os.path.join(folder, "data")
        cfg = self._write_config(folder, data)
        t0 = time.monotonic()
        st, out, err = procs.run("hedgewitch-import", [self.binary, "-c", cfg, "user", "import",
                                                       userset.hedgewitch_csv], folder, 600)
        if st != 0:
            raise ServerError("hedgewitch user import failed (%s): %s%s" % (st, out, err))
        self.templates[userset.name] = (data, time.monotonic() - t0)

    def start(self, folder, userset, cpu):
        self.dir = folder
        os.makedirs(folder, exist_ok=True)
        data = os.path.join(folder, "data")
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(self.templates[userset.name][0], data)
        self.config = self._write_config(folder, data)
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        env["NO_COLOR"] = "1"
        self.argv = taskset(cpu) + [self.binary, "-c", self.config, "serve"]
        self.proc = procs.Proc("hedgewitch", self.argv, folder, env=env)

        def ready():
            self.check_alive("start-up")
            st, _, _ = self.cli(["status", "--json"], folder, timeout=10)
            return st == 0

        if not procs.wait_until(ready, 30, 0.1):
            self.stop()
            raise ServerError("hedgewitch did not answer `status` within 30 s")

    def pids(self):
        # One process; its /proc/PID/stat line covers all its threads.
        return [self.proc.pid] if self.alive() else []

    def thread_ticks(self):
        """CPU ticks per thread (the SIP event loop, the SQLite writer...)."""
        return procs.thread_ticks(self.proc.pid) if self.alive() else {}

    def memory(self):
        m = super().memory()
        m["rss_kib"] = procs.status_kb(self.proc.pid, "VmRSS") if self.alive() else 0
        m["threads"] = len(os.listdir("/proc/%d/task" % self.proc.pid)) if self.alive() else 0
        return m

    def status(self):
        st, out, _ = self.cli(["status", "--json"], self.dir, timeout=20)
        if st != 0:
            return {}
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {}

    def counters(self):
        """Numeric counters of `status --json`, flattened (counters.* and the top level)."""
        s = self.status()
        out = {}
        for k, v in s.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = v
        for k, v in (s.get("counters") or {}).items():
            if isinstance(v, (int, float)):
                out[k] = v
        return out

    def contacts(self):
        return self.status().get("contacts")

    def command_line(self):
        return "taskset -c 0 hedgewitch -c hedgewitch.toml serve"

    def version(self, logdir):
        st, out, _ = procs.run("hedgewitch-version", [self.binary, "--version"], logdir, 20)
        v = out.strip() if st == 0 else "?"
        return v[len("hedgewitch "):] if v.startswith("hedgewitch ") else v


class Kamailio(Server):
    key = "kamailio"
    label = "Kamailio"

    # counters of `kamcmd stats.get_statistics all` kept in the results (deltas per run)
    COUNTERS = ("core:rcv_requests", "core:rcv_replies", "core:fwd_requests", "core:fwd_replies",
                "core:drop_requests", "core:drop_replies", "core:err_requests", "core:err_replies",
                "sl:sent_replies", "sl:5xx_replies", "registrar:accepted_regs",
                "registrar:rejected_regs", "usrloc:location_contacts", "shmem:used_size",
                "shmem:real_used_size", "shmem:max_used_size")

    def __init__(self, port, children, shm_mb, pkg_mb, auth_mode="htable"):
        super().__init__(port)
        self.children = children
        self.shm_mb = shm_mb
        self.pkg_mb = pkg_mb
        self.auth_mode = auth_mode
        self.rundir = None
        self.cfg = None

    def prepare(self, userset, workroot):
        pass  # the db_text folder is written with the user set

    def render(self, folder, userset):
        with open(KAMAILIO_TEMPLATE) as f:
            text = f.read()
        # htable size: 2^n slots, about one per user
        htsize = max(8, min(20, (len(userset.all) - 1).bit_length()))
        values = {
            "DEBUG": "0",
            "ADDR": HOST,
            "PORT": str(self.port),
            "DOMAIN": DOMAIN,
            "MPATH": KAMAILIO_MODULES,
            "RUNDIR": self.rundir,
            "SECRET": secrets.token_hex(16),
            "DBDIR": userset.kamailio_db,
            "HTSIZE": str(htsize),
        }
        for k, v in values.items():
            text = text.replace("@%s@" % k, v)
        left = re.findall(r"@[A-Z_]+@", text)
        if left:
            raise ServerError("unfilled placeholders in the Kamailio template: %s" % left)
        path = os.path.join(folder, "kamailio.cfg")
        with open(path, "w") as f:
            f.write(text)
        return path

    def ctl(self):
        return "unix:%s/kamailio_ctl" % self.rundir

    def kamcmd(self, args, timeout=20):
        st, out, _ = procs.run("kamcmd", ["kamcmd", "-s", self.ctl()] + list(args), self.dir, timeout)
        return out if st == 0 else None

    def start(self, folder, userset, cpu):
        self.dir = folder
        os.makedirs(folder, exist_ok=True)
        self.rundir = os.path.join(folder, "run")
        os.makedirs(self.rundir, exist_ok=True)
        self.cfg = self.render(folder, userset)
        self.argv = taskset(cpu) + [
            "kamailio", "-f", self.cfg, "-DD", "-E", "-n", str(self.children),
            "-m", str(self.shm_mb), "-M", str(self.pkg_mb), "-Y", self.rundir]
        if self.auth_mode == "auth_db":
            self.argv += ["-A", "AUTH_DB"]
        self.proc = procs.Proc("kamailio", self.argv, folder)

        def ready():
            self.check_alive("start-up")
            return procs.udp_port_bound(self.port) and self.kamcmd(["core.uptime"], 10) is not None

        if not procs.wait_until(ready, 60, 0.2):
            self.stop()
            raise ServerError("Kamailio did not answer on its control socket within 60 s")

    def pids(self):
        # The main process and every process forked from it (workers, timers, ctl handler).
        return procs.process_tree(self.proc.pid) if self.alive() else []

    def statistics(self):
        out = self.kamcmd(["stats.get_statistics", "all"])
        d = {}
        for line in (out or "").splitlines():
            m = re.match(r"\s*([\w.-]+:[\w.-]+)\s*=\s*(-?\d+)", line)
            if m:
                d[m.group(1)] = int(m.group(2))
        return d

    def counters(self):
        s = self.statistics()
        out = {k: s[k] for k in self.COUNTERS if k in s}
        # transactions (tm.stats): current, waiting, created, 5xx...
        for line in (self.kamcmd(["tm.stats"]) or "").splitlines():
            m = re.match(r"\s*(\w+):\s*(\d+)", line)
            if m:
                out["tm:" + m.group(1)] = int(m.group(2))
        return out

    def contacts(self):
        return self.statistics().get("usrloc:location_contacts")

    def command_line(self):
        a = "taskset -c 0 kamailio -f kamailio.cfg -DD -E -n %d -m %d -M %d -Y RUNDIR" % (
            self.children, self.shm_mb, self.pkg_mb)
        if self.auth_mode == "auth_db":
            a += " -A AUTH_DB"
        return a

    def version(self, logdir):
        st, out, _ = procs.run("kamailio-version", ["kamailio", "-v"], logdir, 20)
        first = out.strip().splitlines()[0] if out.strip() else "?"
        deb = ""
        try:
            deb = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "kamailio"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
        m = re.match(r"version: kamailio (\S+) \(([^)]*)\)", first)
        if m:
            first = "Kamailio %s (%s" % (m.group(1), m.group(2))
            return first + (", Debian package %s)" % deb if deb else ")")
        return first
