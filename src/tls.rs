//! TLS 1.3 on the daemon's TCP port (rustls, ring provider only): certificates made from
//! Ed25519 identities, and the verifiers that accept a peer for the key it proves, not
//! for a certificate authority's say-so.
//!
//! Neither side trusts a CA. The daemon's certificate is self-signed by its identity; a
//! client accepts any Ed25519 certificate during the handshake (the handshake signature
//! proves the daemon holds the identity's private half) and then, before it sends
//! anything that matters, checks that a vendor-signed key the daemon hosts names that
//! identity (`client::trust`). Video servers present their own identity the same way;
//! the daemon knows them by public key after enrolment (mutual TLS, no shared secret).

use crate::identity::{Identity, PublicKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use std::sync::Arc;

/// ALPN of the licence protocol.
pub const ALPN_LICENCE: &[u8] = b"netkey/1";
/// ALPN of the web console.
pub const ALPN_HTTP: &[u8] = b"http/1.1";
/// The name clients put in SNI; certificates are checked by key, never by name.
pub const SERVER_NAME: &str = "netkey";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make a certificate for the identity: {0}")]
    Certificate(String),
    #[error("TLS configuration failed: {0}")]
    Config(#[from] rustls::Error),
}

/// The only crypto provider netkey uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `identity`, naming `names` (the daemon id, so that a
/// browser shows something recognisable on the web console).
pub fn certificate(
    identity: &Identity,
    names: &[String],
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let der = PrivatePkcs8KeyDer::from(identity.pkcs8().to_vec());
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(der)))
}

/// The Ed25519 public key a certificate carries. Anything else is refused: every netkey
/// identity is Ed25519.
pub fn public_key_of(cert: &CertificateDer<'_>) -> Result<PublicKey, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let spki = &parsed.tbs_certificate.subject_pki;
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err("the certificate's key is not Ed25519".into());
    }
    PublicKey::from_slice(&spki.subject_public_key.data)
        .ok_or_else(|| "the certificate's Ed25519 key is not 32 bytes".into())
}

/// The identity a TLS peer proved, if it presented a certificate.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<PublicKey> {
    certs
        .and_then(|c| c.first())
        .and_then(|c| public_key_of(c).ok())
}

/// The daemon's side for the licence protocol: TLS 1.3 only, ALPN `netkey/1`, and a
/// client certificate requested (enrolment and login need one; the check that it is an
/// enrolled server's is the connection's).
pub fn licence_server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyIdentity { provider }))
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![ALPN_LICENCE.to_vec()];
    // Tickets would let a later connection skip the certificate exchange, and with it
    // the client's proof of identity; a handshake per connection is cheap at our rates.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The daemon's side for the web console: TLS 1.3, ALPN `http/1.1`, no client
/// certificate (a browser would ask its user to pick one).
pub fn web_server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![ALPN_HTTP.to_vec()];
    Ok(Arc::new(config))
}

/// A licence client's side: TLS 1.3, ALPN `netkey/1`, presenting `own` identity.
pub fn licence_client_config(own: &Identity) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let (cert, key) = certificate(own, &["netkey-video-server".to_string()])?;
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyIdentity { provider }))
        .with_client_auth_cert(vec![cert], key)?;
    config.alpn_protocols = vec![ALPN_LICENCE.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Accepts any peer that proves an Ed25519 identity in the handshake. Who that identity
/// is allowed to be is decided after the handshake, by the code that knows the keys.
#[derive(Debug)]
struct AnyIdentity {
    provider: Arc<CryptoProvider>,
}

impl AnyIdentity {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        public_key_of(cert).map(|_| ()).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(std::io::Error::other(e)),
            )))
        })
    }

    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

fn no_tls12() -> rustls::Error {
    rustls::Error::General("only TLS 1.3 is accepted".into())
}

impl ServerCertVerifier for AnyIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for AnyIdentity {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_carries_its_identity() {
        let id = Identity::generate();
        let (cert, _) = certificate(&id, &["nkd-test".into()]).expect("certificate");
        assert_eq!(public_key_of(&cert).expect("key"), id.public());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let err =
            public_key_of(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).expect_err("garbage");
        assert!(err.contains("unreadable certificate"), "{err}");
    }

    #[tokio::test]
    async fn mutual_handshake_proves_both_identities() {
        let daemon = Identity::generate();
        let server = Identity::generate();
        let (cert, key) = certificate(&daemon, &["nkd-test".into()]).expect("certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(
            licence_server_config(cert, key).expect("server config"),
        );
        let connector =
            tokio_rustls::TlsConnector::from(licence_client_config(&server).expect("client"));
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from(SERVER_NAME).expect("name");
        let (accepted, connected) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
        let accepted = accepted.expect("daemon side");
        let connected = connected.expect("client side");
        assert_eq!(
            peer_identity(accepted.get_ref().1.peer_certificates()),
            Some(server.public())
        );
        assert_eq!(
            peer_identity(connected.get_ref().1.peer_certificates()),
            Some(daemon.public())
        );
        assert_eq!(connected.get_ref().1.alpn_protocol(), Some(ALPN_LICENCE));
        assert_eq!(
            connected.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
    }
}
