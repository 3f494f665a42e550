//! HTTPS for `atoll serve`: the operator's certificate (`--tls-cert`,
//! `--tls-key`), or one signed by a local CA Atoll makes once at
//! `<data-dir>/tls/ca.pem` (its key beside it, 0600). The server
//! certificate is signed afresh at each start for the names clients use
//! (the public URL's host, `localhost`, loopback addresses, the listen
//! address). The SDKs' build-context uploads need HTTPS; clients trust
//! the CA by adding `ca.pem` to their trust store (`make run` prints how).

use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The CA's distinguished name (the same every start, so a server
/// certificate signed now chains to the CA made earlier).
const CA_NAME: &str = "Atoll local CA";

/// Files of the local CA and the server certificate it signed.
pub struct LocalCa {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

fn write_private(path: &Path, body: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(body.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))
}

fn ca_params() -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, CA_NAME);
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "Atoll");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// The names a server certificate covers.
fn server_names(public_url: &str, listen: &str) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let mut add = |n: &str| {
        let n = n.trim_start_matches('[').trim_end_matches(']');
        if !n.is_empty() && n != "0.0.0.0" && n != "::" && !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    };
    let authority = public_url
        .split_once("://")
        .map_or(public_url, |(_, r)| r)
        .split('/')
        .next()
        .unwrap_or("");
    add(host_of(authority));
    add(host_of(listen));
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        add(h.trim());
    }
    names
}

/// `host` of `host:port` / `[v6]:port`.
pub fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// Makes (once) the local CA under `dir` and signs a server certificate
/// for this server's names.
pub fn local_ca(dir: &Path, public_url: &str, listen: &str) -> Result<LocalCa> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key_path = dir.join("ca.key");
    let ca_pem = dir.join("ca.pem");
    let ca_key = match std::fs::read_to_string(&ca_key_path) {
        Ok(pem) if ca_pem.exists() => rcgen::KeyPair::from_pem(&pem)
            .with_context(|| format!("reading {}", ca_key_path.display()))?,
        _ => {
            let key = rcgen::KeyPair::generate().context("generating the CA key")?;
            let cert = ca_params()
                .self_signed(&key)
                .context("signing the CA certificate")?;
            write_private(&ca_key_path, &key.serialize_pem(), 0o600)?;
            write_private(&ca_pem, &cert.pem(), 0o644)?;
            tracing::info!(ca = %ca_pem.display(), "made a local certificate authority");
            key
        }
    };
    // The issuer as the CA certificate describes it (same name and key).
    let issuer = ca_params()
        .self_signed(&ca_key)
        .context("loading the CA certificate")?;
    let names = server_names(public_url, listen);
    let mut params = rcgen::CertificateParams::new(names.clone()).context("the server's names")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Atoll server");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().context("generating the server key")?;
    let cert = params
        .signed_by(&key, &issuer, &ca_key)
        .context("signing the server certificate")?;
    let cert_pem = dir.join("server.pem");
    let key_pem = dir.join("server.key");
    write_private(&cert_pem, &cert.pem(), 0o644)?;
    write_private(&key_pem, &key.serialize_pem(), 0o600)?;
    tracing::debug!(names = ?names, "server certificate signed by the local CA");
    Ok(LocalCa {
        ca_pem,
        cert_pem,
        key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_authorities() {
        assert_eq!(host_of("127.0.0.1:3000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:3000"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
    }

    #[test]
    fn the_ca_is_made_once_and_server_certificates_chain_to_it() {
        let dir = std::env::temp_dir().join(format!("atoll-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = local_ca(&dir, "http://10.1.2.3:3000", "0.0.0.0:3000").unwrap();
        let ca = std::fs::read(&first.ca_pem).unwrap();
        let second = local_ca(&dir, "http://10.1.2.3:3000", "0.0.0.0:3000").unwrap();
        assert_eq!(ca, std::fs::read(&second.ca_pem).unwrap(), "the CA is kept");
        // A client trusting only ca.pem accepts the server's certificate
        // for the public host.
        use rustls::client::danger::ServerCertVerifier;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(&second.ca_pem).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .unwrap();
        let leaf = rustls_pki_types::CertificateDer::from_pem_file(&second.cert_pem).unwrap();
        let now = rustls_pki_types::UnixTime::now();
        for host in ["10.1.2.3", "127.0.0.1", "localhost"] {
            let name = rustls_pki_types::ServerName::try_from(host).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], now)
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        let other = rustls_pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(verifier
            .verify_server_cert(&leaf, &[], &other, &[], now)
            .is_err());
        let mode = std::fs::metadata(dir.join("ca.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
