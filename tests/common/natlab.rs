//! Network namespaces for NAT tests, made and removed by the test itself: a "public" namespace
//! for the server (198.18.0.1 on a bridge) and homes, each behind its own NAT namespace
//! (nftables masquerade with random ports, so the phone's address and port both change).
//! Addresses from 198.18.0.0/15 (public side) and 100.64.0.0/10 (homes) only.
//!
//! ```text
//!  home N: 100.64.N.2 --- 100.64.N.1 [NAT N] 198.18.0.(10+N) --- bridge: 198.18.0.1 (server)
//! ```

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub const SERVER_IP: &str = "198.18.0.1";

pub struct NatLab {
    prefix: String,
    namespaces: Vec<String>,
}

/// A phone's place: its namespace and address.
pub struct Home {
    pub ns: String,
    pub ip: String,
    /// The NAT's public address, where the phone's packets appear to come from.
    pub public_ip: String,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl NatLab {
    /// The public namespace and `homes` homes behind NATs. Needs root (CAP_NET_ADMIN).
    pub fn new(homes: u8) -> Result<NatLab, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "hw{}x{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut lab = NatLab {
            prefix,
            namespaces: vec![],
        };
        let public = lab.add_ns("pub")?;
        let p = public.as_str();
        run(&["ip", "-n", p, "link", "add", "br0", "type", "bridge"])?;
        run(&[
            "ip",
            "-n",
            p,
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            "br0",
        ])?;
        run(&["ip", "-n", p, "link", "set", "br0", "up"])?;
        for n in 1..=homes {
            let nat = lab.add_ns(&format!("nat{n}"))?;
            let home = lab.add_ns(&format!("home{n}"))?;
            let port = format!("n{n}");
            run(&[
                "ip", "-n", &nat, "link", "add", "wan", "type", "veth", "peer", "name", &port,
                "netns", p,
            ])?;
            run(&["ip", "-n", p, "link", "set", &port, "master", "br0", "up"])?;
            run(&[
                "ip",
                "-n",
                &nat,
                "addr",
                "add",
                &format!("198.18.0.{}/24", 10 + n),
                "dev",
                "wan",
            ])?;
            run(&["ip", "-n", &nat, "link", "set", "wan", "up"])?;
            run(&[
                "ip", "-n", &home, "link", "add", "eth0", "type", "veth", "peer", "name", "lan",
                "netns", &nat,
            ])?;
            run(&[
                "ip",
                "-n",
                &nat,
                "addr",
                "add",
                &format!("100.64.{n}.1/24"),
                "dev",
                "lan",
            ])?;
            run(&["ip", "-n", &nat, "link", "set", "lan", "up"])?;
            run(&[
                "ip",
                "-n",
                &home,
                "addr",
                "add",
                &format!("100.64.{n}.2/24"),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", &home, "link", "set", "eth0", "up"])?;
            run(&[
                "ip",
                "-n",
                &home,
                "route",
                "add",
                "default",
                "via",
                &format!("100.64.{n}.1"),
            ])?;
            run(&[
                "ip",
                "netns",
                "exec",
                &nat,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])?;
            let nft = |rule: &str| run(&["ip", "netns", "exec", &nat, "nft", rule]);
            nft("add table ip nat")?;
            nft("add chain ip nat post { type nat hook postrouting priority 100; }")?;
            nft("add rule ip nat post oifname \"wan\" masquerade random")?;
        }
        Ok(lab)
    }

    fn add_ns(&mut self, name: &str) -> Result<String, String> {
        let ns = format!("{}-{name}", self.prefix);
        run(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn public_ns(&self) -> String {
        format!("{}-pub", self.prefix)
    }

    /// Makes home `n`'s NAT drop what leaves the home matching `what` (an nftables match,
    /// such as `ip daddr 198.18.0.1 udp dport 3478`): a firewall that lets less through.
    pub fn block(&self, n: u8, what: &str) -> Result<(), String> {
        let nat = format!("{}-nat{n}", self.prefix);
        let nft = |rule: &str| run(&["ip", "netns", "exec", &nat, "nft", rule]);
        if nft("list table inet firewall").is_err() {
            nft("add table inet firewall")?;
            nft("add chain inet firewall passing { type filter hook forward priority 0; }")?;
        }
        nft(&format!(
            "add rule inet firewall passing iifname \"lan\" {what} drop"
        ))
    }

    pub fn home(&self, n: u8) -> Home {
        Home {
            ns: format!("{}-home{n}", self.prefix),
            ip: format!("100.64.{n}.2"),
            public_ip: format!("198.18.0.{}", 10 + n),
        }
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        // Deleting a namespace removes its interfaces and rules with it.
        for ns in self.namespaces.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}
