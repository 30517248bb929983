//! TLS to PostgreSQL, chosen by the connection string's `sslmode` as libpq
//! does, on rustls with the ring backend (no OpenSSL).
//!
//! | `sslmode` | wire | server certificate |
//! |---|---|---|
//! | absent, `disable` | plain | - |
//! | `allow`, `prefer` | TLS when the server offers it, else plain | not checked |
//! | `require` | TLS or no connection | not checked |
//! | `verify-ca` | TLS or no connection | signed by a trusted CA |
//! | `verify-full` | TLS or no connection | signed by a trusted CA and issued for the host |
//!
//! The trusted CAs are the PEM file `sslrootcert=` names in the connection
//! string, else the one `PGSSLROOTCERT` names, else the system's roots
//! (which honour `SSL_CERT_FILE`); `sslrootcert=system` asks for the
//! system's roots explicitly. Unlike libpq, an absent `sslmode` means
//! plain, as the services have always connected.
//!
//! tokio-postgres understands neither `verify-*` nor `sslrootcert`;
//! [`connector`] takes them out of the string and gives back one it
//! parses, with the connector that does what they asked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
pub use tokio_postgres_rustls::MakeRustlsConnect;

/// Why a connection string's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSettingsError {
    #[error("sslmode={0} is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    UnknownMode(String),
    #[error("cannot read the root certificates in {path}: {reason}")]
    RootCert { path: PathBuf, reason: String },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("sslmode={0} needs trusted roots, and the system has none (give sslrootcert= or PGSSLROOTCERT)")]
    NoSystemRoots(String),
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("a percent sign in {0} is not followed by two hex digits")]
    BadEscape(String),
}

/// What `sslmode` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(value: Option<&str>) -> Result<Self, TlsSettingsError> {
        Ok(match value {
            None | Some("disable") => Self::Disable,
            Some("allow" | "prefer") => Self::Prefer,
            Some("require") => Self::Require,
            Some("verify-ca") => Self::VerifyCa,
            Some("verify-full") => Self::VerifyFull,
            Some(other) => return Err(TlsSettingsError::UnknownMode(other.to_owned())),
        })
    }

    /// The `sslmode` value, as written in a connection string.
    pub fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// The `sslmode` tokio-postgres understands for this mode.
    fn wire(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require | Self::VerifyCa | Self::VerifyFull => "require",
        }
    }

    fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
}

/// The connection string without its TLS settings, and what they asked.
#[derive(Debug, PartialEq, Eq)]
struct Split {
    rest: String,
    mode: Option<String>,
    root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a URL
/// (`postgres://…?sslmode=…`) or a key-value string (`host=… sslmode=…`).
fn split(conninfo: &str) -> Result<Split, TlsSettingsError> {
    let mut mode = None;
    let mut root_cert = None;
    let rest = if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        let (base, query) = conninfo.split_once('?').unwrap_or((conninfo, ""));
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => mode = Some(percent_decode(value)?),
                "sslrootcert" => root_cert = Some(percent_decode(value)?),
                _ => kept.push(pair),
            }
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut kept = Vec::new();
        for pair in conninfo.split_whitespace() {
            match pair.split_once('=') {
                Some(("sslmode", value)) => mode = Some(value.to_owned()),
                Some(("sslrootcert", value)) => root_cert = Some(value.to_owned()),
                _ => kept.push(pair),
            }
        }
        kept.join(" ")
    };
    Ok(Split {
        rest,
        mode,
        root_cert,
    })
}

fn percent_decode(value: &str) -> Result<String, TlsSettingsError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| TlsSettingsError::BadEscape(value.to_owned()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| TlsSettingsError::BadEscape(value.to_owned()))
}

/// The connection string to give tokio-postgres (with an `sslmode`
/// it understands) and the TLS connector to connect with. `env` reads
/// `PGSSLROOTCERT` (the environment, or a map in tests).
pub fn connector(
    conninfo: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(String, Mode, MakeRustlsConnect), TlsSettingsError> {
    let Split {
        rest,
        mode,
        root_cert,
    } = split(conninfo)?;
    let mode = Mode::parse(mode.as_deref())?;
    let separator = if rest.starts_with("postgres://") || rest.starts_with("postgresql://") {
        if rest.contains('?') {
            "&"
        } else {
            "?"
        }
    } else {
        " "
    };
    let rewritten = format!("{rest}{separator}sslmode={}", mode.wire());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous();
    let verifier: Arc<dyn ServerCertVerifier> = if mode.verifies() {
        let roots = roots(mode, root_cert.or_else(|| env("PGSSLROOTCERT")))?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        if mode == Mode::VerifyCa {
            Arc::new(Relaxed {
                chain: Some(webpki),
                provider,
            })
        } else {
            webpki
        }
    } else {
        Arc::new(Relaxed {
            chain: None,
            provider,
        })
    };
    let config = builder
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((rewritten, mode, MakeRustlsConnect::new(config)))
}

fn roots(mode: Mode, file: Option<String>) -> Result<RootCertStore, TlsSettingsError> {
    let mut roots = RootCertStore::empty();
    match file.filter(|f| f != "system") {
        Some(file) => {
            let path = Path::new(&file);
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TlsSettingsError::RootCert {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsSettingsError::NoCertificate(path.to_owned()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::warn!(%error, "reading the system's root certificates");
            }
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(TlsSettingsError::NoSystemRoots(mode.name().to_owned()));
            }
        }
    }
    Ok(roots)
}

/// What checks less than `verify-full`. With a `chain` verifier
/// (`verify-ca`), the chain must lead to a trusted root but the name is
/// not compared with the host; without one (`prefer`, `require`, as
/// libpq), the certificate is not checked. The handshake's signatures
/// always are.
#[derive(Debug)]
struct Relaxed {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_tls_settings_come_out_of_a_url_and_a_key_value_string() {
        let s = split("postgres://u:p@h:5/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x")
            .expect("splits");
        assert_eq!(s.rest, "postgres://u:p@h:5/db?application_name=x");
        assert_eq!(s.mode.as_deref(), Some("verify-full"));
        assert_eq!(s.root_cert.as_deref(), Some("/tmp/ca.pem"));
        let s = split("postgres://h/db?sslmode=require").expect("splits");
        assert_eq!(s.rest, "postgres://h/db");
        let s = split("host=h dbname=d sslmode=verify-ca sslrootcert=/ca.pem").expect("splits");
        assert_eq!(s.rest, "host=h dbname=d");
        assert_eq!(s.mode.as_deref(), Some("verify-ca"));
        assert_eq!(s.root_cert.as_deref(), Some("/ca.pem"));
        assert!(split("postgres://h/db?sslrootcert=%zz").is_err());
    }

    #[test]
    fn each_mode_becomes_one_the_postgres_crate_parses() {
        for (given, mode, wire) in [
            (
                "postgres://h/db",
                Mode::Disable,
                "postgres://h/db?sslmode=disable",
            ),
            (
                "postgres://h/db?sslmode=prefer",
                Mode::Prefer,
                "postgres://h/db?sslmode=prefer",
            ),
            (
                "postgres://h/db?connect_timeout=2&sslmode=require",
                Mode::Require,
                "postgres://h/db?connect_timeout=2&sslmode=require",
            ),
            (
                "host=h sslmode=require",
                Mode::Require,
                "host=h sslmode=require",
            ),
        ] {
            let (url, got, _) = connector(given, &no_env).expect(given);
            assert_eq!((url.as_str(), got), (wire, mode), "{given}");
            assert!(url.parse::<postgres::Config>().is_ok(), "{url}");
        }
        assert!(matches!(
            connector("postgres://h/db?sslmode=verify", &no_env),
            Err(TlsSettingsError::UnknownMode(_))
        ));
    }

    #[test]
    fn a_missing_or_empty_root_file_stops_the_set_up() {
        let missing = connector(
            "postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            &no_env,
        )
        .map(|_| ());
        assert!(
            matches!(missing, Err(TlsSettingsError::RootCert { .. })),
            "{missing:?}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let from_env = |name: &str| (name == "PGSSLROOTCERT").then(|| empty.display().to_string());
        let result = connector("postgres://h/db?sslmode=verify-ca", &from_env).map(|_| ());
        assert!(
            matches!(result, Err(TlsSettingsError::NoCertificate(_))),
            "{result:?}"
        );
    }
}
