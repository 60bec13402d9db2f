//! The certificates the proxy trusts: the compiled-in roots (Mozilla's, so it works in an
//! empty container), plus those of `EXTRA_CA_FILE` (a TLS-inspecting corporate proxy, a
//! private gateway, a Redis with its own CA), for OpenRouter and for `rediss://` alike.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The TLS client configuration of OpenRouter's connections: the compiled-in roots and
/// `extra`, TLS 1.2 and 1.3, no client certificate (ALPN is set by the connector).
///
/// # Panics
/// Never in practice: the ring provider supports the default protocol versions, and the
/// extra certificates were accepted as roots when the configuration was read.
#[must_use]
pub fn client_config(extra: &[CertificateDer<'static>]) -> ClientConfig {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for certificate in extra {
        roots
            .add(certificate.clone())
            .expect("EXTRA_CA_FILE was checked when the configuration was read");
    }
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Whether `certificate` can be a trust anchor; the reason when it cannot.
pub fn check_root(certificate: &CertificateDer<'static>) -> Result<(), String> {
    RootCertStore::empty()
        .add(certificate.clone())
        .map_err(|err| err.to_string())
}

/// The roots for the Redis client, which takes them only as PEM and trusts nothing else
/// once given some: the compiled-in roots (as certificates) and `extra`, PEM-encoded.
#[must_use]
pub fn redis_roots_pem(extra: &[CertificateDer<'static>]) -> Vec<u8> {
    let mut pem = Vec::with_capacity(256 * 1024);
    for certificate in extra.iter().chain(webpki_root_certs::TLS_SERVER_ROOT_CERTS) {
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        let encoded = base64(certificate.as_ref());
        for line in encoded.chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    pem
}

/// Standard base64 with padding (RFC 4648 §4), as PEM wants it.
fn base64(bytes: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let digits = [n >> 18, n >> 12, n >> 6, n].map(|d| ALPHABET[(d & 63) as usize]);
        let kept = chunk.len() + 1;
        out.extend_from_slice(&digits[..kept]);
        out.extend(std::iter::repeat_n(b'=', 4 - kept));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn base64_pads_as_rfc_4648_says() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded.as_bytes());
        }
    }

    #[test]
    fn the_redis_roots_are_every_compiled_in_root_plus_the_extra_ones_and_parse_back() {
        let extra = webpki_root_certs::TLS_SERVER_ROOT_CERTS[0].clone();
        let pem = redis_roots_pem(std::slice::from_ref(&extra));
        let parsed: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            parsed.len(),
            webpki_root_certs::TLS_SERVER_ROOT_CERTS.len() + 1
        );
        assert_eq!(parsed[0], extra);
        assert!(parsed.iter().all(|c| check_root(c).is_ok()));
    }
}
