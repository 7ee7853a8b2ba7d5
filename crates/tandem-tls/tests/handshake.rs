//! Real handshakes between [`ServerTls`] and [`ClientTls`] over loopback TCP: identities both ways,
//! each refusal with its bounded reason, and rotation reaching the next handshake only.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tandem_tls::client::{Alpn, ClientTls};
use tandem_tls::dev_ca::{self, IssueRequest};
use tandem_tls::handshake::HANDSHAKE_RESULTS;
use tandem_tls::identity::{identity_of, Expected};
use tandem_tls::pair::Files;
use tandem_tls::server::{ClientAuth, ServerTls};
use tandem_tls::store::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SERVER: &str = "spiffe://t.test/ns/x/sa/server";
const CLIENT: &str = "spiffe://t.test/ns/x/sa/client";

fn issue(root: &Path, ca: &str, out: &str, id: &str) -> Arc<Identity> {
    dev_ca::issue(&IssueRequest {
        ca_dir: root.join(ca),
        out_dir: root.join(out),
        identity: Some(id.to_owned()),
        dns: vec!["server.t.test".into()],
        days: 1,
    })
    .unwrap();
    load(root, out, ca)
}

fn load(root: &Path, out: &str, ca: &str) -> Arc<Identity> {
    Identity::load(Files {
        cert: root.join(out).join("cert.pem"),
        key: root.join(out).join("key.pem"),
        trust_bundle: Some(root.join(ca).join("ca.pem")),
    })
    .unwrap()
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        dev_ca::init(&dir.path().join("ca"), "t.test", 1).unwrap();
        dev_ca::init(&dir.path().join("other-ca"), "t.test", 1).unwrap();
        Pki { dir }
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// Serves one handshake with `server`, returning what it saw: Ok(client identity) or the reason.
async fn serve_once(
    server: ServerTls,
) -> (u16, tokio::task::JoinHandle<Result<Option<String>, String>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        match server.accept(s).await {
            Ok((mut tls, id)) => {
                // Echo a byte, so a client refused after its handshake (TLS 1.3) notices.
                let mut b = [0u8; 1];
                if tls.read_exact(&mut b).await.is_ok() {
                    let _ = tls.write_all(&b).await;
                    let _ = tls.flush().await;
                }
                Ok(id)
            }
            Err(e) => Err(e.reason_str().to_owned()),
        }
    });
    (port, task)
}

/// Connects and exchanges one byte: Ok(server identity) or the client-side reason.
async fn client_once(client: &ClientTls, port: u16) -> Result<Option<String>, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut tls = client
        .connect(s, "127.0.0.1", Alpn::Http1)
        .await
        .map_err(|e| e.reason_str().to_owned())?;
    tls.write_all(b"x").await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
    Ok(tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(identity_of))
}

fn server(id: &Arc<Identity>, auth: ClientAuth) -> ServerTls {
    ServerTls::new(id.clone(), auth, Duration::from_secs(5), None).unwrap()
}

fn client(id: &Arc<Identity>, expected: Expected, cert: bool) -> ClientTls {
    ClientTls::new(id.clone(), expected, None, cert, None).unwrap()
}

/// mTLS with the expected identity: each side sees the other's SPIFFE ID.
#[tokio::test]
async fn mutual_identities() {
    let pki = Pki::new();
    let s = issue(pki.root(), "ca", "server", SERVER);
    let c = issue(pki.root(), "ca", "client", CLIENT);
    let (port, task) = serve_once(server(&s, ClientAuth::Required)).await;
    let got = client_once(
        &client(&c, Expected::Identities(vec![SERVER.into()]), true),
        port,
    )
    .await;
    assert_eq!(got.unwrap().as_deref(), Some(SERVER));
    assert_eq!(task.await.unwrap().unwrap().as_deref(), Some(CLIENT));
}

/// The client refuses a server with another identity (identity_mismatch), and one whose
/// certificate is not valid for the expected DNS name.
#[tokio::test]
async fn client_refuses_unexpected_server() {
    let pki = Pki::new();
    let s = issue(pki.root(), "ca", "server", SERVER);
    let c = issue(pki.root(), "ca", "client", CLIENT);
    for expected in [
        Expected::Identities(vec!["spiffe://t.test/ns/x/sa/other".into()]),
        Expected::DnsName("other.t.test".into()),
    ] {
        let (port, _task) = serve_once(server(&s, ClientAuth::Required)).await;
        let got = client_once(&client(&c, expected, true), port).await;
        assert_eq!(got.unwrap_err(), "identity_mismatch");
    }
    let (port, _task) = serve_once(server(&s, ClientAuth::Required)).await;
    let got = client_once(
        &client(&c, Expected::DnsName("server.t.test".into()), true),
        port,
    )
    .await;
    assert_eq!(got.unwrap().as_deref(), Some(SERVER));
}

/// The server refuses a client without a certificate and one from another CA, with the
/// reasons the metrics carry; the client refuses a server from another CA.
#[tokio::test]
async fn refusals_have_bounded_reasons() {
    let pki = Pki::new();
    let s = issue(pki.root(), "ca", "server", SERVER);
    let c = issue(pki.root(), "ca", "client", CLIENT);
    let foreign = issue(pki.root(), "other-ca", "foreign", CLIENT);
    let any = Expected::Identities(vec![SERVER.into()]);

    let (port, task) = serve_once(server(&s, ClientAuth::Required)).await;
    assert!(client_once(&client(&c, any.clone(), false), port)
        .await
        .is_err());
    assert_eq!(task.await.unwrap().unwrap_err(), "no_client_cert");

    // A client with a foreign-CA certificate that trusts the server: only the server can refuse.
    let foreign_client = Identity::load(Files {
        cert: pki.root().join("foreign/cert.pem"),
        key: pki.root().join("foreign/key.pem"),
        trust_bundle: Some(pki.root().join("ca/ca.pem")),
    })
    .unwrap();
    let (port, task) = serve_once(server(&s, ClientAuth::Required)).await;
    assert!(
        client_once(&client(&foreign_client, any.clone(), true), port)
            .await
            .is_err()
    );
    assert_eq!(task.await.unwrap().unwrap_err(), "unknown_ca");

    let (port, _task) = serve_once(server(&foreign, ClientAuth::None)).await;
    assert_eq!(
        client_once(&client(&c, any, true), port).await.unwrap_err(),
        "unknown_ca"
    );
    assert!(HANDSHAKE_RESULTS.contains(&"unknown_ca"));
}

/// After a reload the next handshake presents the new certificate.
#[tokio::test]
async fn rotation_reaches_the_next_handshake() {
    let pki = Pki::new();
    let s = issue(pki.root(), "ca", "server", SERVER);
    let c = issue(pki.root(), "ca", "client", CLIENT);
    let new_id = "spiffe://t.test/ns/x/sa/server-v2";
    let expected = Expected::Identities(vec![SERVER.into(), new_id.into()]);
    let (port, _t) = serve_once(server(&s, ClientAuth::Required)).await;
    let tls_server = server(&s, ClientAuth::Required);
    assert_eq!(
        client_once(&client(&c, expected.clone(), true), port)
            .await
            .unwrap()
            .as_deref(),
        Some(SERVER)
    );

    issue(pki.root(), "ca", "server", new_id);
    assert!(s.reload().await.unwrap());
    let (port, _t) = serve_once(tls_server).await;
    assert_eq!(
        client_once(&client(&c, expected, true), port)
            .await
            .unwrap()
            .as_deref(),
        Some(new_id)
    );
}

/// `optional` client auth: a client without a certificate is served (no identity), one with a
/// certificate is verified and identified.
#[tokio::test]
async fn optional_client_auth() {
    let pki = Pki::new();
    let s = issue(pki.root(), "ca", "server", SERVER);
    let c = issue(pki.root(), "ca", "client", CLIENT);
    let expected = Expected::Identities(vec![SERVER.into()]);
    let (port, task) = serve_once(server(&s, ClientAuth::Optional)).await;
    assert!(client_once(&client(&c, expected.clone(), false), port)
        .await
        .is_ok());
    assert_eq!(task.await.unwrap().unwrap(), None);
    let (port, task) = serve_once(server(&s, ClientAuth::Optional)).await;
    assert!(client_once(&client(&c, expected, true), port).await.is_ok());
    assert_eq!(task.await.unwrap().unwrap().as_deref(), Some(CLIENT));
}

/// A certificate past its notAfter is refused as a workload pair, and as a client certificate
/// the server refuses it as `expired`.
#[tokio::test]
async fn expired_client_certificate() {
    let pki = Pki::new();
    let s = issue(pki.root(), "ca", "server", SERVER);
    // Sign an already-expired certificate with the CA (rcgen directly: `tandem certs` never
    // writes one).
    let ca_pem = std::fs::read_to_string(pki.root().join("ca/ca.pem")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(pki.root().join("ca/ca-key.pem")).unwrap(),
    )
    .unwrap();
    let ca = rcgen::CertificateParams::from_ca_cert_pem(&ca_pem)
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(CLIENT.try_into().unwrap())];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 2, 1);
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let dir = pki.root().join("expired");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    // The pair itself is refused as a workload identity...
    let files = Files {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        trust_bundle: Some(pki.root().join("ca/ca.pem")),
    };
    let e = Identity::load(files.clone()).unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    // ...and a plain rustls client presenting it anyway is refused by the server: `expired`.
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(tandem_tls::pair::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
                .unwrap(),
        )
        .unwrap();
    let (port, task) = serve_once(server(&s, ClientAuth::Required)).await;
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("server.t.test").unwrap();
    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        let _ = tls.write_all(b"x").await;
        let _ = tls.flush().await;
    }
    assert_eq!(task.await.unwrap().unwrap_err(), "expired");
}
