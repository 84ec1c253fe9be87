//! `verify.url` over HTTPS: an nginx that terminates TLS with a certificate from a CA
//! the test makes (never one the system trusts) in front of the managed nginx, and a
//! deploy whose check through the proxy goes through it.

use crate::support::nginx::TlsProxy;
use crate::support::service::Service;

/// A CA (PEM) and a server certificate chain and key it signed for `localhost` and
/// `127.0.0.1`.
fn private_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cutover test CA");
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    (ca.pem(), server.pem(), server_key.serialize_pem())
}

#[test]
fn https_verify_url_works_with_a_private_ca_and_names_the_url_without_it() {
    let svc = Service::new("e2e-tls");
    let (ca, cert, key) = private_ca();
    let tls = TlsProxy::start(svc.proxy_addr(), &cert, &key);
    std::fs::write(svc.base.join("ca.pem"), ca).expect("write ca.pem");
    let url = format!("https://127.0.0.1:{}/health", tls.listen.port());
    svc.edit_config(|text| {
        text.replace(
            "[verify]\n",
            &format!("[verify]\nurl = \"{url}\"\nca_file = \"ca.pem\"\ntimeout = \"2s\"\n"),
        )
    });

    svc.deploy("v1").success();
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    let log = tls.access_log();
    assert!(
        log.contains("GET /health"),
        "the verification must have gone through the TLS proxy: {log:?}"
    );

    // Without the CA the server's certificate is not trusted: the deploy rolls back
    // and says which URL failed and why.
    svc.edit_config(|text| text.replace("ca_file = \"ca.pem\"\n", ""));
    let out = svc.deploy("v2");
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains(&url), "{}", out.stderr);
    assert!(out.stderr.contains("certificate"), "{}", out.stderr);
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    assert_eq!(svc.status()["live"]["color"], "blue");
}
