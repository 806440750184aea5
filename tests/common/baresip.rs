//! baresip as a test phone: its own config folder (`-f`), a UDP console (`cons.so`) driven
//! with `/dial` and `/hangup`, an 8 kHz tone WAV (made with sox) as microphone and an
//! `aubridge` device as a null speaker. No stdio, no sound card, no STUN/ICE. It runs on
//! loopback (127.0.0.1, or [::1] with `-6`), or inside a namespace of the NAT lab.

use super::*;
use std::net::UdpSocket;

/// How to start one baresip: see [`Baresip::launch`].
pub struct Phone<'a> {
    /// Its config folder; its output goes to the same path with `.out`.
    pub dir: PathBuf,
    pub name: &'static str,
    /// The address it listens on and sends from.
    pub host: String,
    /// `host` is IPv6 (`baresip -6`).
    pub ipv6: bool,
    /// Its SIP port (it takes the next one for TLS too).
    pub sip_port: u16,
    /// Its UDP console.
    pub console: u16,
    /// The first of 40 RTP ports.
    pub rtp: u16,
    /// Namespace and address, when it runs in one.
    pub netns: Option<(&'a str, &'a str)>,
    /// The `accounts` file.
    pub account: String,
    /// The `contacts` file.
    pub contacts: String,
    /// The microphone: a WAV file.
    pub tone: &'a Path,
    /// More lines for baresip's `config` (`sip_cafile ...`).
    pub config_extra: String,
}

/// One baresip process with its config folder and console.
pub struct Baresip {
    pub name: &'static str,
    pub sip_port: u16,
    console: u16,
    /// Namespace and address of a phone in the NAT lab.
    netns: Option<(String, String)>,
    out: PathBuf,
    child: Option<Child>,
}

impl Baresip {
    pub fn start(srv: &Server, user: &TestUser, auto_answer: bool, tone: &Path) -> Baresip {
        Baresip::start_with(srv, user, auto_answer, tone, None, "udp", "")
    }

    /// A phone in a namespace of the NAT lab (`netns`: namespace and the phone's address),
    /// registering over `transport` (udp or tcp), with `account_extra` appended to its
    /// account line (`;sipnat=outbound`...).
    pub fn start_with(
        srv: &Server,
        user: &TestUser,
        auto_answer: bool,
        tone: &Path,
        netns: Option<(&str, &str)>,
        transport: &str,
        account_extra: &str,
    ) -> Baresip {
        let phone = Placement {
            label: user.name,
            ipv6: false,
            netns,
            transport,
            account_extra,
        };
        Baresip::spawn(srv, user, auto_answer, tone, &phone)
    }

    /// A phone on loopback over UDP, IPv6 ([::1], `baresip -6`, registering through the
    /// server's [::1] listener: the server needs `ipv6: true`) or IPv4; `label` names its
    /// folder and output, so one user can have two phones.
    pub fn start_on(
        srv: &Server,
        user: &TestUser,
        label: &'static str,
        ipv6: bool,
        auto_answer: bool,
        tone: &Path,
    ) -> Baresip {
        let phone = Placement {
            label,
            ipv6,
            netns: None,
            transport: "udp",
            account_extra: "",
        };
        Baresip::spawn(srv, user, auto_answer, tone, &phone)
    }

    fn spawn(
        srv: &Server,
        user: &TestUser,
        auto_answer: bool,
        tone: &Path,
        phone: &Placement<'_>,
    ) -> Baresip {
        let Placement {
            label,
            ipv6,
            netns,
            transport,
            account_extra,
        } = *phone;
        let dir = srv.dir.join(format!("baresip-{label}"));
        // SIP port, and the next one that baresip takes for TLS. A namespace has ports of
        // its own.
        let (host, sip_port, console, rtp) = match netns {
            Some((_, ip)) => (ip.to_string(), 5062, 5070, 30000),
            None if ipv6 => (
                "::1".to_string(),
                free_ports(2),
                free_port(),
                free_ports(40),
            ),
            None => (HOST.to_string(), free_ports(2), free_port(), free_ports(40)),
        };
        let server = if ipv6 {
            format!("[::1]:{}", srv.port)
        } else {
            srv.addr()
        };
        let account = format!(
            "<sip:{name}@{DOMAIN}>;auth_user={name};auth_pass={pw};\
             outbound=\"sip:{server};transport={transport}\";regint=600;audio_codecs=PCMU{auto}{account_extra}\n",
            name = user.name,
            pw = user.password,
            auto = if auto_answer { ";answermode=auto" } else { "" },
        );
        Baresip::launch(Phone {
            dir,
            name: label,
            host,
            ipv6,
            sip_port,
            console,
            rtp,
            netns,
            account,
            contacts: String::new(),
            tone,
            config_extra: String::new(),
        })
    }

    /// Starts baresip as `p` says: its folder, ports, account line and contacts.
    pub fn launch(p: Phone<'_>) -> Baresip {
        let Phone {
            dir,
            name,
            host,
            ipv6,
            sip_port,
            console,
            rtp,
            netns,
            account,
            contacts,
            tone,
            config_extra,
        } = p;
        fs::create_dir_all(&dir).expect("baresip dir");
        let listen = if ipv6 {
            format!("[{host}]:{sip_port}")
        } else {
            format!("{host}:{sip_port}")
        };
        // The console stays on 127.0.0.1 even for an IPv6 phone (baresip -6 still binds it
        // there), so `command` needs no second way.
        let config = format!(
            "poll_method epoll\n\
             sip_listen {listen}\n\
             net_interface {host}\n\
             call_local_timeout 30\n\
             call_max_calls 2\n\
             audio_player aubridge,sink-{name}\n\
             audio_source aufile,{tone}\n\
             audio_alert aubridge,alert-{name}\n\
             rtp_ports {rtp}-{rtp_end}\n\
             module_path /usr/lib/baresip/modules\n\
             module uuid.so\n\
             module g711.so\n\
             module aufile.so\n\
             module aubridge.so\n\
             module_tmp account.so\n\
             module_app contact.so\n\
             module_app menu.so\n\
             module cons.so\n\
             cons_listen {console_host}:{console}\n",
            console_host = if ipv6 { HOST } else { &host },
            tone = tone.display(),
            rtp_end = rtp + 39,
        );
        fs::write(dir.join("config"), config + &config_extra).expect("baresip config");
        fs::write(dir.join("accounts"), account).expect("baresip accounts");
        fs::write(dir.join("contacts"), contacts).expect("baresip contacts");

        let out = dir.with_extension("out");
        let log = fs::File::create(&out).expect("baresip output");
        let log2 = log.try_clone().expect("clone");
        let mut cmd = match netns {
            Some((ns, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "baresip"]);
                c
            }
            None => Command::new("baresip"),
        };
        let child = cmd
            .arg(if ipv6 { "-6" } else { "-4" })
            .arg("-f")
            .arg(&dir)
            // baresip quits by itself after 90 s whatever happens to this test.
            .args(["-t", "90"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run baresip: {e}"));
        Baresip {
            name,
            sip_port,
            console,
            netns: netns.map(|(n, i)| (n.to_string(), i.to_string())),
            out,
            child: Some(child),
        }
    }

    /// Everything baresip printed so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.out).unwrap_or_default()).into_owned()
    }

    /// Sends a console command (`/dial …`, `/hangup`).
    pub fn command(&self, cmd: &str) {
        if let Some((ns, ip)) = &self.netns {
            // The console listens inside the namespace: bash's /dev/udp sends from there.
            let script = format!("printf '%s\\n' \"$0\" > /dev/udp/{ip}/{}", self.console);
            let ok = Command::new("ip")
                .args(["netns", "exec", ns, "bash", "-c", &script, cmd])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "cannot send `{cmd}` to baresip {}", self.name);
            return;
        }
        let s = UdpSocket::bind((HOST, 0)).expect("console socket");
        s.send_to(format!("{cmd}\n").as_bytes(), (HOST, self.console))
            .expect("send console command");
    }

    /// Sends a console command to a phone on loopback and waits (bounded) for `expect` in
    /// baresip's reply: some commands (`/answermode`) answer only to the console's sender,
    /// not in the output. Panics when the reply does not come.
    pub fn ask(&self, cmd: &str, expect: &str, timeout: Duration) {
        assert!(self.netns.is_none(), "ask is for phones on loopback");
        let s = UdpSocket::bind((HOST, 0)).expect("console socket");
        s.send_to(format!("{cmd}\n").as_bytes(), (HOST, self.console))
            .expect("send console command");
        let deadline = std::time::Instant::now() + timeout;
        let mut reply = String::new();
        let mut buf = [0u8; 4096];
        while !reply.contains(expect) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match s.recv(&mut buf) {
                Ok(n) => reply.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => break,
            }
        }
        assert!(
            reply.contains(expect),
            "baresip {} did not answer `{cmd}` with {expect:?}; it said {:?}",
            self.name,
            clean(&reply)
        );
    }

    /// Sends a console command to a phone on loopback and returns what the console answers
    /// within `wait` (`/contacts` lists the contacts with their presence).
    pub fn console_reply(&self, cmd: &str, wait: Duration) -> String {
        let s = UdpSocket::bind((HOST, 0)).expect("console socket");
        s.send_to(format!("{cmd}\n").as_bytes(), (HOST, self.console))
            .expect("send console command");
        let deadline = std::time::Instant::now() + wait;
        let mut reply = String::new();
        let mut buf = [0u8; 8192];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match s.recv(&mut buf) {
                Ok(n) => reply.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => break,
            }
        }
        clean(&reply)
    }

    /// Waits (bounded) until the output satisfies `cond`.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, cond: impl Fn(&str) -> bool) {
        let ok = poll_until(timeout, || cond(&self.output()) || self.exited());
        assert!(
            ok && cond(&self.output()),
            "baresip {} never showed {what}; its output:\n{}",
            self.name,
            clean(&self.output())
        );
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- baresip {} (tail) -----\n{}",
                self.name,
                clean(&self.output())
                    .lines()
                    .rev()
                    .take(60)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// How and where one phone runs (see `Baresip::start_with`, `Baresip::start_on`).
#[derive(Clone, Copy)]
struct Placement<'a> {
    /// Names its folder and output (the user's name unless one user has two phones).
    label: &'static str,
    ipv6: bool,
    netns: Option<(&'a str, &'a str)>,
    transport: &'a str,
    account_extra: &'a str,
}

/// baresip's output without colour codes, its once-a-tick status line on lines of its own.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final letter
            while let Some(&n) = chars.peek() {
                chars.next();
                if n.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if c == '\r' {
            out.push('\n');
        } else {
            out.push(c);
        }
    }
    out
}

/// 30 s of a 1 kHz tone, 8 kHz mono, as the phones' microphone (made with sox).
pub fn make_tone(srv: &Server) -> PathBuf {
    make_tone_in(&srv.dir)
}

/// The same, in `dir`.
pub fn make_tone_in(dir: &Path) -> PathBuf {
    let tone = dir.join("tone8k.wav");
    let mut sox = Command::new("sox");
    sox.args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
        .arg(&tone)
        .args(["synth", "30", "sine", "1000"]);
    let r = run_bounded(&mut sox, None, &dir.join("sox"), Duration::from_secs(30));
    assert!(r.success(), "sox failed: {}", r.stderr);
    tone
}

/// Whether, after the call was established, the status line reported received audio
/// (`audio=TX/RX (bit/s)` with RX > 0).
pub fn receives_audio(output: &str) -> bool {
    receives_audio_in_call(output, 1)
}

/// The same for the `n`-th call established (1 for the first).
pub fn receives_audio_in_call(output: &str, n: usize) -> bool {
    let Some((start, _)) = output
        .match_indices("Call established")
        .nth(n.saturating_sub(1))
    else {
        return false;
    };
    output[start..].split("audio=").skip(1).any(|s| {
        let rates = s.split_whitespace().next().unwrap_or("");
        let mut parts = rates.split('/');
        let tx = parts
            .next()
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0);
        let rx = parts
            .next()
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0);
        tx > 0 && rx > 0
    })
}

/// alice (dialling) and bob (answering by himself) as baresip phones on loopback, both
/// registered; with the registrations as the server lists them.
pub fn registered_pair(srv: &Server) -> (Baresip, Baresip, Vec<serde_json::Value>) {
    let tone = make_tone(srv);
    let bob = Baresip::start(srv, &BOB, true, &tone);
    let alice = Baresip::start(srv, &ALICE, false, &tone);
    let regs = srv.wait_registrations(
        "alice and bob registered by baresip",
        Duration::from_secs(20),
        |r| {
            ["alice", "bob"]
                .iter()
                .all(|u| r.iter().any(|x| x["user"] == *u))
        },
    );
    (alice, bob, regs)
}
