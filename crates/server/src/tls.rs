//! TLS (SIPS, RFC 5630) with rustls: TLS 1.2 and 1.3 only, ring as the crypto provider.
//! The server side presents the configured certificate; the client side verifies other
//! domains' servers against the SIP domain they serve (RFC 5922: the name in the URI, not
//! the host DNS gave), trusting the system's CAs and any extra CA files.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// `[tls]`: the certificate this server presents, and what it trusts.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate chain (leaf first).
    pub certificate: Option<PathBuf>,
    /// PEM file with its private key.
    pub key: Option<PathBuf>,
    /// Extra PEM files of CAs to trust for other domains' servers (besides the system's).
    pub ca_files: Vec<PathBuf>,
}

/// What the transports need.
#[derive(Clone)]
pub struct Tls {
    /// Accepts TLS connections with our certificate; None without `certificate` and `key`.
    pub acceptor: Option<TlsAcceptor>,
    /// Opens TLS connections to other servers, trusting the system's CAs and `ca_files`.
    pub connector: TlsConnector,
    /// The certificate the acceptor presents; a reload swaps what it holds, so a renewed
    /// certificate reaches the next handshake with no restart and no listener touched.
    served: Option<Arc<ServedCert>>,
}

/// The certificate and key presented to clients, replaceable while the listeners run.
#[derive(Debug)]
struct ServedCert(std::sync::RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|k| k.clone())
    }
}

/// Loads a certificate chain and its key, checking that they belong together.
fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = certs(cert)?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, der, &provider())
        .map(Arc::new)
        .map_err(|e| format!("tls certificate and key: {e}"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let list: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if list.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(list)
}

impl Tls {
    /// Reads the certificate, key and CA files that `[tls]` names (TLS 1.2 and 1.3).
    /// `certificate` without `key`, or `key` without `certificate`, is an error.
    pub fn new(cfg: &TlsConfig) -> Result<Tls, String> {
        let served = match (&cfg.certificate, &cfg.key) {
            (Some(c), Some(k)) => Some(Arc::new(ServedCert(std::sync::RwLock::new(
                certified_key(c, k)?,
            )))),
            (None, None) => None,
            _ => return Err("[tls] needs both `certificate` and `key`".into()),
        };
        let acceptor = match &served {
            Some(s) => {
                let sc = ServerConfig::builder_with_provider(provider())
                    .with_protocol_versions(VERSIONS)
                    .map_err(|e| e.to_string())?
                    .with_no_client_auth()
                    .with_cert_resolver(s.clone());
                Some(TlsAcceptor::from(Arc::new(sc)))
            }
            None => None,
        };
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
        for f in &cfg.ca_files {
            for c in certs(f)? {
                roots.add(c).map_err(|e| format!("{}: {e}", f.display()))?;
            }
        }
        let cc = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls {
            acceptor,
            connector: TlsConnector::from(Arc::new(cc)),
            served,
        })
    }

    /// Reads `[tls]` again while running (a reload), changing nothing yet: the certificate
    /// and key files are read anew, so a renewed certificate at the same path is found; bad
    /// files are an error. `apply` then swaps it in.
    pub fn prepare(&self, cfg: &TlsConfig) -> Result<TlsUpdate, String> {
        let fresh = Tls::new(cfg)?;
        let (key, restart) = match (&self.served, &cfg.certificate, &cfg.key) {
            (Some(_), Some(c), Some(k)) => (Some(certified_key(c, k)?), false),
            (None, None, None) => (None, false),
            // TLS listeners cannot be added or removed live.
            _ => (None, true),
        };
        let changed = match (&self.served, &key) {
            (Some(served), Some(key)) => served.0.read().map_or(true, |old| old.cert != key.cert),
            _ => false,
        };
        Ok(TlsUpdate {
            connector: fresh.connector,
            key,
            changed,
            restart,
        })
    }

    /// Swaps in what `prepare` read: the certificate is presented from the next handshake
    /// on, the CA list verifies the next outgoing connection.
    pub fn apply(&mut self, update: TlsUpdate) {
        if let (Some(served), Some(key)) = (&self.served, update.key) {
            if let Ok(mut slot) = served.0.write() {
                *slot = key;
            }
        }
        self.connector = update.connector;
    }
}

/// A reload's TLS settings, read and checked, not yet in force.
pub struct TlsUpdate {
    connector: TlsConnector,
    key: Option<Arc<CertifiedKey>>,
    /// The presented certificate changes.
    pub changed: bool,
    /// TLS listeners would have to be added or removed: a restart.
    pub restart: bool,
}

/// The name a server's certificate must carry: the SIP domain, or the IP address itself.
pub fn server_name(name: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(name.to_string()).ok()
}

/// Writes a private CA (`ca.pem`) and a certificate for `domain` and `also` (more host
/// names or IP addresses, such as the one a browser opens the page at) signed by it
/// (`cert.pem`, `key.pem`) into `dir`, for tests and trials: other servers trust `ca.pem`
/// through `tls.ca_files`, browsers and test tools through their own trust settings.
pub fn self_signed(domain: &str, also: &[String], dir: &Path) -> Result<Vec<PathBuf>, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let e = |e: rcgen::Error| e.to_string();
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("hedgewitch test CA for {domain}"),
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(e)?).map_err(e)?;
    let mut names = vec![domain.to_string()];
    names.extend(also.iter().filter(|n| n.as_str() != domain).cloned());
    // rcgen writes a name that parses as an IP address as an IP address entry.
    let mut leaf = CertificateParams::new(names).map_err(e)?;
    leaf.distinguished_name.push(DnType::CommonName, domain);
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().map_err(e)?;
    let cert = leaf.signed_by(&key, &ca).map_err(e)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files = [
        (dir.join("ca.pem"), ca.pem()),
        (dir.join("cert.pem"), cert.pem()),
        (dir.join("key.pem"), key.serialize_pem()),
    ];
    for (path, text) in &files {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600));
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_pair_loads_and_is_trusted_through_its_ca() {
        let dir = std::env::temp_dir().join(format!("hw-tls-{}", std::process::id()));
        self_signed("beta.test", &["127.0.0.1".into()], &dir).unwrap();
        let tls = Tls::new(&TlsConfig {
            certificate: Some(dir.join("cert.pem")),
            key: Some(dir.join("key.pem")),
            ca_files: vec![dir.join("ca.pem")],
        })
        .unwrap();
        assert!(tls.acceptor.is_some());
        assert!(Tls::new(&TlsConfig {
            certificate: Some(dir.join("cert.pem")),
            ..Default::default()
        })
        .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
