//! Kamailio (Debian's package) playing a SIP provider for the trunk tests: a registrar that
//! asks for digest (one account, `home`), a proxy that challenges calls out (407) and sends
//! them to a "telephone network" address, and that sends calls for the household's number
//! to the account's registered Contact. Its own folder, control socket and port; stopped on
//! drop. The configuration is written by the test from the text below.

use super::*;

/// The provider's SIP domain.
pub const PROVIDER_DOMAIN: &str = "provider.test";
/// The account at the provider.
pub const ACCOUNT: &str = "home";
/// The household's number at the provider.
pub const DID: &str = "+4930999";

const CONFIG: &str = r#"#!KAMAILIO
debug=2
log_stderror=yes
disable_tcp=yes
auto_aliases=no
dns=no
rev_dns=no
children=2
listen=udp:@ADDR@:@PORT@
alias="provider.test"
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "ctl.so"
loadmodule "auth.so"
loadmodule "xlog.so"

modparam("ctl", "binrpc", "unix:@RUNDIR@/kamailio_ctl")
modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", 30)
modparam("auth", "qop", "auth")
modparam("auth", "secret", "provider-test-secret")

request_route {
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    if (is_method("OPTIONS") && uri==myself && $rU==$null) {
        sl_send_reply("200", "Keepalive");
        exit;
    }
    if (has_totag()) {
        if (loose_route()) {
            t_relay();
            exit;
        }
        if (is_method("ACK")) {
            if (t_check_trans()) {
                t_relay();
            }
            exit;
        }
        sl_send_reply("404", "Not Here");
        exit;
    }
    if (is_method("CANCEL")) {
        if (t_check_trans()) {
            t_relay();
        }
        exit;
    }
    if (is_method("REGISTER")) {
        if (!pv_www_authenticate("provider.test", "@PASSWORD@", "0")) {
            xlog("L_INFO", "REGISTER challenged: user $au from $si:$sp\n");
            www_challenge("provider.test", "0");
            exit;
        }
        if ($au != "home") {
            sl_send_reply("403", "Forbidden");
            exit;
        }
        consume_credentials();
        xlog("L_INFO", "REGISTER ok: $ct from $si:$sp\n");
        save("location");
        exit;
    }
    if ($rU == "+4930999") {
        xlog("L_INFO", "DID call for $rU from $fu\n");
        record_route();
        $rU = "home";
        if (!lookup("location")) {
            sl_send_reply("480", "Not Registered");
            exit;
        }
        t_relay();
        exit;
    }
    if (!pv_proxy_authenticate("provider.test", "@PASSWORD@", "0")) {
        proxy_challenge("provider.test", "0");
        exit;
    }
    consume_credentials();
    xlog("L_INFO", "OUT call to $rU from $fu as $ai\n");
    if (!($rU =~ "^\+[1-9][0-9]{4,14}$") && $rU != "112") {
        sl_send_reply("484", "Address Incomplete (E.164 Please)");
        exit;
    }
    record_route();
    $du = "sip:@PSTN@";
    t_relay();
    exit;
}
"#;

pub struct Kamailio {
    /// The network namespace it runs in, if any.
    netns: Option<String>,
    child: Option<Child>,
    dir: PathBuf,
    cfg: PathBuf,
    pub addr: String,
    pub log: PathBuf,
}

impl Kamailio {
    /// Starts the provider on `addr` (`127.0.0.1:PORT`) with the account's password; calls
    /// out go to `pstn` (`127.0.0.1:PORT`, a SIPp callee).
    pub fn start(dir: &Path, addr: &str, password: &str, pstn: &str) -> Kamailio {
        Kamailio::start_in(None, dir, addr, password, pstn)
    }

    /// The same inside a network namespace (the NAT lab's public side).
    pub fn start_in(
        netns: Option<&str>,
        dir: &Path,
        addr: &str,
        password: &str,
        pstn: &str,
    ) -> Kamailio {
        let rundir = dir.join("kamailio");
        fs::create_dir_all(&rundir).expect("kamailio folder");
        let (ip, port) = addr.rsplit_once(':').expect("addr");
        let text = CONFIG
            .replace("@ADDR@", ip)
            .replace("@PORT@", port)
            .replace("@RUNDIR@", &rundir.display().to_string())
            .replace("@PASSWORD@", password)
            .replace("@PSTN@", pstn);
        let cfg = rundir.join("kamailio.cfg");
        fs::write(&cfg, text).expect("kamailio.cfg");
        let mut k = Kamailio {
            netns: netns.map(str::to_string),
            child: None,
            log: rundir.join("kamailio.log"),
            dir: rundir,
            cfg,
            addr: addr.to_string(),
        };
        k.spawn();
        k
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("kamailio log");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "kamailio"]);
                c
            }
            None => Command::new("kamailio"),
        };
        // `ip netns exec` becomes kamailio: its pid's socket table is the namespace's.
        let child = cmd
            .arg("-f")
            .arg(&self.cfg)
            .args(["-DD", "-E", "-n", "2", "-m", "64", "-M", "8", "-Y"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("kamailio starts");
        let port: u16 = self
            .addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("port");
        let pid = child.id();
        self.child = Some(child);
        assert!(
            poll_until(Duration::from_secs(15), || udp_port_bound_in(pid, port)),
            "kamailio did not listen on {}:\n{}",
            self.addr,
            tail(&self.log, 30)
        );
    }

    /// Stops the provider (the household's registration is lost with it: its location table
    /// is in memory).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: the main process takes its children down with it (SIGKILL would
            // leave them holding the port).
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            if wait_bounded(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let port: u16 = self
                .addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(0);
            if self.netns.is_none() {
                poll_until(Duration::from_secs(10), || !udp_port_bound(port));
            }
        }
    }

    /// Starts it again after `stop`.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
    }
}
