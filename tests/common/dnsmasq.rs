//! A DNS server for tests: Debian's dnsmasq on 127.0.0.1 and a free port, answering only the
//! records given on its command line (no upstream, no hosts file); killed on drop. Servers
//! under test ask it through `[dns] servers`, so no test domain reaches the system resolver.

use super::*;

pub struct Dnsmasq {
    child: Child,
    pub port: u16,
}

impl Dnsmasq {
    /// Serves `records` (dnsmasq options such as `--srv-host=...`), logging into `dir`.
    pub fn start(dir: &Path, records: &[String]) -> Dnsmasq {
        Dnsmasq::start_in(None, dir, records)
    }

    /// The same inside a network namespace (on its own loopback).
    pub fn start_in(netns: Option<&str>, dir: &Path, records: &[String]) -> Dnsmasq {
        let port = free_port();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "dnsmasq"]);
                c
            }
            None => Command::new("dnsmasq"),
        };
        let child = cmd
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--conf-file=/dev/null",
                "--log-queries",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .args(records)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("dnsmasq.out")).expect("dnsmasq log"))
            .stderr(File::create(dir.join("dnsmasq.err")).expect("dnsmasq log"))
            .spawn()
            .expect("dnsmasq starts");
        // `ip netns exec` becomes dnsmasq: its pid's socket table is the namespace's.
        let pid = child.id();
        assert!(
            poll_until(Duration::from_secs(10), || udp_port_bound_in(pid, port)),
            "dnsmasq did not listen on {port}"
        );
        Dnsmasq { child, port }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
