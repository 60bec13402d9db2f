//! `EXTRA_CA_FILE`: a PEM file of certificates trusted in addition to the compiled-in
//! roots. A file that cannot be read, does not parse or holds no usable certificate stops
//! startup: a proxy that silently trusts less than it was told would fail later, at the
//! first request, with a TLS error far from its cause.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::read::Reader;

pub(super) fn parse_extra_ca<F: Fn(&str) -> Option<String>>(
    r: &mut Reader<F>,
) -> Vec<CertificateDer<'static>> {
    let Some((_, path)) = r.raw(&["EXTRA_CA_FILE"]) else {
        return Vec::new();
    };
    let shown = super::absolute(path.as_ref()).display().to_string();
    let pem = match std::fs::read(&path) {
        Ok(pem) => pem,
        Err(err) => {
            r.problems
                .push(format!("EXTRA_CA_FILE: cannot read {shown}: {err}"));
            return Vec::new();
        }
    };
    let certificates = match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
        Ok(certificates) => certificates,
        Err(err) => {
            r.problems
                .push(format!("EXTRA_CA_FILE: {shown} is not a PEM file ({err})"));
            return Vec::new();
        }
    };
    if certificates.is_empty() {
        r.problems.push(format!(
            "EXTRA_CA_FILE: {shown} holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)"
        ));
    }
    for (index, certificate) in certificates.iter().enumerate() {
        if let Err(reason) = crate::tls::check_root(certificate) {
            r.problems.push(format!(
                "EXTRA_CA_FILE: certificate {} of {shown} cannot be a trusted root: {reason}",
                index + 1
            ));
        }
    }
    certificates
}
