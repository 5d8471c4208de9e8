//! TLS for connections to PostgreSQL (blue's replication session and green's
//! apply sessions), with libpq's `sslmode` semantics.
//!
//! | sslmode | TLS | chain verified | host name verified |
//! |---|---|---|---|
//! | disable | never | - | - |
//! | allow, prefer | if needed / offered | only if a root certificate is available | no |
//! | require | yes | only if a root certificate is available | no |
//! | verify-ca | yes | yes (root certificate required) | no |
//! | verify-full | yes | yes (root certificate required) | yes |
//!
//! "Available" follows libpq: `sslrootcert` (a file, or `system` for the OS
//! store), else `~/.postgresql/root.crt` when it exists. Client certificates
//! come from `sslcert`/`sslkey` (or `~/.postgresql/postgresql.{crt,key}`).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::{ConnInfo, RootCert, SslMode};

/// TLS could not be set up from the connection string's files.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A certificate or key file is missing or unreadable.
    #[error("cannot read {what} from {path}: {reason}")]
    File {
        /// Which file (root certificate, client certificate, client key).
        what: &'static str,
        /// Its path.
        path: String,
        /// Why it could not be used.
        reason: String,
    },
    /// verify-ca/verify-full without any root certificate.
    #[error(
        "sslmode={0} needs a root certificate: set sslrootcert in the connection string, or put the CA in ~/.postgresql/root.crt"
    )]
    NoRootCertificate(&'static str),
    /// rustls refused the configuration.
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the client configuration for `conninfo`'s sslmode and files.
pub fn client_config(conninfo: &ConnInfo) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let provider = provider();
    let roots = load_roots(conninfo.sslrootcert.as_ref())?;
    let verifier: Arc<dyn ServerCertVerifier> = match (conninfo.sslmode, roots) {
        (SslMode::VerifyFull, Some(roots)) => {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?
        }
        (_, Some(roots)) => Arc::new(ChainOnly(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?,
        )),
        (SslMode::VerifyCa, None) => return Err(TlsConfigError::NoRootCertificate("verify-ca")),
        (SslMode::VerifyFull, None) => {
            return Err(TlsConfigError::NoRootCertificate("verify-full"));
        }
        (_, None) => Arc::new(Unverified(Arc::clone(&provider))),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&conninfo.sslcert, &conninfo.sslkey) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| file_error("client certificate", cert, e))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("client key", key, e))?;
            builder.with_client_auth_cert(certs, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn file_error(
    what: &'static str,
    path: &std::path::Path,
    e: impl std::fmt::Display,
) -> TlsConfigError {
    TlsConfigError::File {
        what,
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn load_roots(root: Option<&RootCert>) -> Result<Option<RootCertStore>, TlsConfigError> {
    let mut store = RootCertStore::empty();
    match root {
        None => return Ok(None),
        Some(RootCert::System) => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // Skip certificates the platform store holds but webpki cannot parse.
                let _ = store.add(cert);
            }
            if store.is_empty() {
                return Err(TlsConfigError::File {
                    what: "root certificates",
                    path: "the system trust store".into(),
                    reason: "no usable certificates found".into(),
                });
            }
        }
        Some(RootCert::File(path)) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| file_error("root certificate", path, e))?;
            if certs.is_empty() {
                return Err(file_error(
                    "root certificate",
                    path,
                    "no PEM certificates in the file",
                ));
            }
            for cert in certs {
                store
                    .add(cert)
                    .map_err(|e| file_error("root certificate", path, e))?;
            }
        }
    }
    Ok(Some(store))
}

/// The name rustls sends (SNI) and, under verify-full, checks.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsConfigError> {
    ServerName::try_from(host.to_owned()).map_err(|e| TlsConfigError::File {
        what: "server name",
        path: host.to_owned(),
        reason: e.to_string(),
    })
}

/// verify-ca (and require/prefer with a root certificate): the chain must
/// verify, the host name need not match.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// allow/prefer/require without a root certificate: encryption without
/// authentication of the server, as libpq does. Handshake signatures are
/// still checked, so the session is bound to the certificate presented.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The `tls-server-end-point` channel binding data (RFC 5929): the server
/// certificate hashed with its signature's hash function, where MD5 and SHA-1
/// are replaced by SHA-256. `None` when the signature algorithm has no single
/// hash (Ed25519, RSA-PSS): then SCRAM runs without channel binding, as libpq
/// does for such certificates.
pub fn server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let algorithm = match signature_algorithm_oid(cert_der)? {
        // sha256WithRSAEncryption, ecdsa-with-SHA256, and (replaced) md5/sha1 with RSA or ECDSA
        [42, 134, 72, 134, 247, 13, 1, 1, 11]
        | [42, 134, 72, 206, 61, 4, 3, 2]
        | [42, 134, 72, 134, 247, 13, 1, 1, 4]
        | [42, 134, 72, 134, 247, 13, 1, 1, 5]
        | [42, 134, 72, 206, 61, 4, 1] => &ring::digest::SHA256,
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        [42, 134, 72, 134, 247, 13, 1, 1, 12] | [42, 134, 72, 206, 61, 4, 3, 3] => {
            &ring::digest::SHA384
        }
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        [42, 134, 72, 134, 247, 13, 1, 1, 13] | [42, 134, 72, 206, 61, 4, 3, 4] => {
            &ring::digest::SHA512
        }
        _ => return None,
    };
    Some(ring::digest::digest(algorithm, cert_der).as_ref().to_vec())
}

/// The OID bytes of `Certificate.signatureAlgorithm` (RFC 5280 4.1.1.2).
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    let (cert, _) = der_element(der, 0x30)?;
    let (_tbs, after_tbs) = der_element(cert, 0x30)?;
    let (alg, _) = der_element(after_tbs, 0x30)?;
    let (oid, _) = der_element(alg, 0x06)?;
    Some(oid)
}

/// Splits one DER element with the expected tag: (contents, rest).
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// TLS for tokio-postgres sessions (green), with the same sslmode rules and
/// SCRAM channel binding as blue's replication session.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl MakeRustls {
    /// A connector for `conninfo`'s sslmode and certificate files.
    pub fn new(conninfo: &ConnInfo) -> Result<MakeRustls, TlsConfigError> {
        Ok(MakeRustls {
            config: client_config(conninfo)?,
        })
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustls
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = TlsConfigError;

    /// tokio-postgres asks for every host, also those it will not encrypt
    /// (a Unix socket's empty name): a name that is not one is refused when
    /// a handshake is attempted, not before.
    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, TlsConfigError> {
        Ok(RustlsConnect {
            config: Arc::clone(&self.config),
            server_name: server_name(domain).map_err(|e| e.to_string()),
        })
    }
}

/// One TLS handshake for tokio-postgres.
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    server_name: Result<ServerName<'static>, String>,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<RustlsStream<S>, std::io::Error>> + Send>,
    >;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self
                .server_name
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await
                .map(RustlsStream)
        })
    }
}

/// An encrypted tokio-postgres session.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio::io::AsyncRead for RustlsStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S> tokio::io::AsyncWrite for RustlsStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        let hash = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| server_end_point(cert));
        match hash {
            Some(h) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(h),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walker_rejects_garbage_without_panicking() {
        assert_eq!(signature_algorithm_oid(&[]), None);
        assert_eq!(
            signature_algorithm_oid(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(signature_algorithm_oid(&[0x30, 0x02, 0x30, 0x00]), None);
        assert_eq!(server_end_point(&[0x30, 0x03, 0x30, 0x01]), None);
    }
}
