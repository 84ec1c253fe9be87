//! The `tcp://` engine transport with TLS, as `docker --tlsverify` does it: the engine's
//! certificate must chain to the CA file the user names, and this client shows its
//! own certificate and key.
//!
//! It owns reading the three PEM files and the rustls client built from them. It trusts
//! nothing but that CA: bollard's `ssl` feature also trusts every root the system
//! trusts, so any public certificate for the engine's name would do, and a registry
//! password travels on this connection with each push and pull.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// A bollard client for the engine at `address` (`tcp://host:port`) over mutual TLS
/// with `files`.
///
/// # Errors
/// Which file cannot be read or holds no usable certificate or key, or what rustls
/// refused; the caller adds the address.
pub fn client(
    address: &str,
    files: &TlsFiles,
    timeout: Duration,
) -> Result<bollard::Docker, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in certificates(&files.ca)? {
        roots
            .add(ca)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", files.ca.display()))?;
    }
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "{}: no private key read from it ({e}); expected a PEM key such as `-----BEGIN PRIVATE KEY-----`",
            files.key.display()
        )
    })?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|e| {
        format!(
            "{} and {} do not make a client certificate: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let host_port = address.strip_prefix("tcp://").unwrap_or(address);
    super::pooled_client(
        hyper_rustls::HttpsConnector::from((http, config)),
        format!("https://{}", host_port.trim_end_matches('/')),
        timeout,
    )
    .map_err(|e| e.to_string())
}

/// The PEM certificates in `path`; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate in it; expected PEM (`-----BEGIN CERTIFICATE-----`)",
            path.display()
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three files in a temp dir, with the given contents.
    fn files(ca: &str, cert: &str, key: &str) -> (tempfile::TempDir, TlsFiles) {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::in_dir(dir.path());
        for (path, text) in [(&files.ca, ca), (&files.cert, cert), (&files.key, key)] {
            std::fs::write(path, text).unwrap();
        }
        (dir, files)
    }

    fn error(files: &TlsFiles) -> String {
        match client("tcp://127.0.0.1:2376", files, Duration::from_secs(1)) {
            Ok(_) => panic!("the files should be refused"),
            Err(e) => e,
        }
    }

    #[test]
    fn unusable_certificate_files_are_named_before_any_connection() {
        let (_dir, f) = files("not pem", "", "");
        let e = error(&f);
        assert!(
            e.contains(&f.ca.display().to_string()) && e.contains("no certificate"),
            "{e}"
        );

        let ca = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap();
        let (_dir, f) = files(&ca.cert.pem(), &ca.cert.pem(), "not a key");
        let e = error(&f);
        assert!(
            e.contains(&f.key.display().to_string()) && e.contains("private key"),
            "{e}"
        );

        let (dir, f) = files(&ca.cert.pem(), &ca.cert.pem(), "");
        std::fs::remove_file(dir.path().join("cert.pem")).unwrap();
        let e = error(&f);
        assert!(e.contains("cannot read") && e.contains("cert.pem"), "{e}");
    }

    #[test]
    fn usable_files_make_a_client_without_connecting() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap();
        let (_dir, f) = files(
            &ca.cert.pem(),
            &ca.cert.pem(),
            &ca.signing_key.serialize_pem(),
        );
        assert!(client("tcp://127.0.0.1:2376", &f, Duration::from_secs(1)).is_ok());
    }
}
