"""User sets: the same accounts, written in each server's format and as SIPp injection files."""

import hashlib
import os

DOMAIN = "bench.test"
CALLEE = ("callee", "callee-Bench-pw1")


def ha1(user, password, realm=DOMAIN):
    return hashlib.md5(("%s:%s:%s" % (user, realm, password)).encode()).hexdigest()


class UserSet:
    """`count` numbered users (u000000...) plus the callee, in folder `root/name`."""

    def __init__(self, root, name, count):
        self.name = name
        self.count = count
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, exist_ok=True)
        self.users = [("u%06d" % i, "pw-%06d-Bench" % i) for i in range(count)]
        self.all = self.users + [CALLEE]
        self.hedgewitch_csv = os.path.join(self.dir, "users.csv")
        self.callers_inf = os.path.join(self.dir, "users.inf")
        self.callee_inf = os.path.join(self.dir, "callee.inf")
        self.kamailio_db = os.path.join(self.dir, "kamailio-db")
        self._write()

    def _write(self):
        with open(self.hedgewitch_csv, "w") as f:
            f.write("# name,extension,password (bench/run)\n")
            for u, p in self.all:
                f.write("%s,,%s\n" % (u, p))
        with open(self.callers_inf, "w") as f:
            f.write("SEQUENTIAL\n")
            for u, p in self.users:
                f.write("%s;%s\n" % (u, p))
        with open(self.callee_inf, "w") as f:
            f.write("SEQUENTIAL\n%s;%s\n" % CALLEE)
        # Kamailio: a db_text folder with both the htable table (user -> HA1, loaded in memory at
        # start-up; the default) and the subscriber table (for -A AUTH_DB / auth_db).
        os.makedirs(self.kamailio_db, exist_ok=True)
        with open(os.path.join(self.kamailio_db, "version"), "w") as f:
            f.write("id(int,auto) table_name(string) table_version(int)\n")
            f.write("0:subscriber:7\n0:htable:2\n")
        with open(os.path.join(self.kamailio_db, "htable"), "w") as f:
            f.write("id(int,auto) key_name(string) key_type(int) value_type(int) "
                    "key_value(string) expires(int)\n")
            for i, (u, p) in enumerate(self.all, 1):
                f.write("%d:%s:0:0:%s:0\n" % (i, u, ha1(u, p)))
        with open(os.path.join(self.kamailio_db, "subscriber"), "w") as f:
            f.write("id(int,auto) username(string) domain(string) password(string,null) "
                    "ha1(string) ha1b(string,null)\n")
            for i, (u, p) in enumerate(self.all, 1):
                f.write("%d:%s:%s::%s:\n" % (i, u, DOMAIN, ha1(u, p)))
