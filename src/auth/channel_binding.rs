//! SCRAM channel binding, type `tls-server-end-point` (RFC 5929 §4.1, RFC 7677), the only
//! type Postgres supports.
//!
//! Why: SCRAM alone proves each side knows the password, but a machine in the middle that
//! terminates TLS on both sides can relay an unbound exchange untouched and then read or change
//! the whole session. With binding, the client's proof covers a hash of the certificate the
//! server presented on *this* TLS connection, so a relay presenting its own certificate makes
//! the proof fail.
//!
//! The binding data is a hash of the server's certificate (DER). The hash follows the
//! certificate's signature algorithm: SHA-256 when that is MD5 or SHA-1 (RFC 5929 upgrades
//! them), else the signature's own hash. Algorithms with no single hash (RSASSA-PSS, whose hash
//! hides in the parameters; Ed25519/Ed448) give no binding — libpq and Postgres, which ask
//! OpenSSL's `OBJ_find_sigid_algs`, refuse those too.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use x509_cert::der::{oid::ObjectIdentifier, Decode};

/// The channel-binding type name in gs2 headers.
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelBindingError {
    #[error("the server presented no certificate")]
    NoCertificate,
    #[error("the server certificate cannot be parsed as X.509")]
    BadCertificate,
    #[error(
        "the server certificate's signature algorithm ({0}) has no single hash, so \
         tls-server-end-point channel binding is undefined for it (use an RSA or ECDSA \
         certificate signed with SHA-256/384/512)"
    )]
    UnsupportedSignatureAlgorithm(String),
}

/// Hash of one certificate for `tls-server-end-point`.
pub fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, ChannelBindingError> {
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|_| ChannelBindingError::BadCertificate)?;
    let hash = hash_for(&cert.signature_algorithm.oid)?;
    Ok(match hash {
        Hash::Sha224 => Sha224::digest(cert_der).to_vec(),
        Hash::Sha256 => Sha256::digest(cert_der).to_vec(),
        Hash::Sha384 => Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The hash RFC 5929 §4.1 takes for a certificate signed with `oid`.
fn hash_for(oid: &ObjectIdentifier) -> Result<Hash, ChannelBindingError> {
    const TABLE: &[(&str, Hash)] = &[
        // RSA PKCS#1 v1.5
        ("1.2.840.113549.1.1.4", Hash::Sha256), // md5WithRSAEncryption → SHA-256
        ("1.2.840.113549.1.1.5", Hash::Sha256), // sha1WithRSAEncryption → SHA-256
        ("1.3.14.3.2.29", Hash::Sha256),        // sha1WithRSASignature (OIW) → SHA-256
        ("1.2.840.113549.1.1.14", Hash::Sha224),
        ("1.2.840.113549.1.1.11", Hash::Sha256),
        ("1.2.840.113549.1.1.12", Hash::Sha384),
        ("1.2.840.113549.1.1.13", Hash::Sha512),
        // ECDSA
        ("1.2.840.10045.4.1", Hash::Sha256), // ecdsa-with-SHA1 → SHA-256
        ("1.2.840.10045.4.3.1", Hash::Sha224),
        ("1.2.840.10045.4.3.2", Hash::Sha256),
        ("1.2.840.10045.4.3.3", Hash::Sha384),
        ("1.2.840.10045.4.3.4", Hash::Sha512),
        // DSA
        ("1.2.840.10040.4.3", Hash::Sha256), // dsa-with-sha1 → SHA-256
        ("2.16.840.1.101.3.4.3.1", Hash::Sha224),
        ("2.16.840.1.101.3.4.3.2", Hash::Sha256),
    ];
    TABLE
        .iter()
        .find(|(o, _)| ObjectIdentifier::new(o).is_ok_and(|o| o == *oid))
        .map(|(_, h)| *h)
        .ok_or_else(|| ChannelBindingError::UnsupportedSignatureAlgorithm(oid.to_string()))
}

/// What a SCRAM client says about channel binding in its gs2 header (RFC 5802 §7).
#[derive(Clone, PartialEq, Eq)]
pub enum Gs2 {
    /// `n,,`: the client does not support binding (no TLS, or binding disabled).
    NotSupported,
    /// `y,,`: the client supports binding but thinks the server does not (TLS, but the server
    /// did not offer `-PLUS`). A server that did offer `-PLUS` must refuse it: someone in the
    /// middle removed the offer.
    NotOffered,
    /// `p=tls-server-end-point,,`: bound to this certificate hash.
    TlsServerEndPoint(Vec<u8>),
}

impl std::fmt::Debug for Gs2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.header())
    }
}

impl Gs2 {
    /// The gs2 header, as sent in client-first and echoed in `c=`.
    pub fn header(&self) -> &'static str {
        match self {
            Gs2::NotSupported => "n,,",
            Gs2::NotOffered => "y,,",
            Gs2::TlsServerEndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    /// The `c=` attribute's value in client-final: base64(gs2 header ‖ binding data).
    pub fn c_attribute(&self) -> String {
        let mut bytes = self.header().as_bytes().to_vec();
        if let Gs2::TlsServerEndPoint(data) = self {
            bytes.extend_from_slice(data);
        }
        BASE64.encode(bytes)
    }
}

/// `upstream.channel_binding`, as libpq's `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBindingMode {
    /// Never bind (`n,,`), even over TLS to a server offering `-PLUS`.
    Disable,
    /// Bind when the link is TLS and the server offers `SCRAM-SHA-256-PLUS`.
    #[default]
    Prefer,
    /// Log in only by SCRAM bound to the server's certificate: no TLS, a server that does not
    /// offer `-PLUS`, another method (md5, password) or none (trust) is refused.
    Require,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Self-signed certificates made by `openssl req -x509 -newkey ec -pkeyopt
    /// ec_paramgen_curve:P-256 -sha384` (and `-sha1`), with their hashes from `sha384sum` and
    /// `sha256sum` of the DER: an independent check of the hash choice.
    pub(crate) const EC_SHA384: &str = "MIIBbzCCARWgAwIBAgIUYc4lcB4qh0CQL8xdgaDJypNJBNkwCgYIKoZIzj0EAwMwDDEKMAgGA1UEAwwBdDAgFw0yNjEyMDcxMjI0NDhaGA8yMTI2MTExMzEyMjQ0OFowDDEKMAgGA1UEAwwBdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABG9UxJj7hrwUk3i/eSzN3W1Q8k6fQe9C8gxI4qspBJRBCw4go7rJSzMivuadY4Rs4bglVxdXjBAxetnbEpmSDIGjUzBRMB0GA1UdDgQWBBSjU3H3fXuriSHnfMu86W3XyS/4AjAfBgNVHSMEGDAWgBSjU3H3fXuriSHnfMu86W3XyS/4AjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMDA0gAMEUCIQDZUWCCP7PEcxDT8Ogr1RB1gY+OKxssm8qwhP2Ip6CeaQIgH23WwHuk9hNLgl38G9YoqLn5o7suB7xBYelAQbHyUDA=";
    const EC_SHA384_HASH: &str = "cd64c507c67c4a9c655e252ae4fc6a44d29ebf40aae11d601b68d8e1c284b07b3effe063c8829e8bbd7f4adf1cf7ac70";
    const EC_SHA1: &str = "MIIBbjCCARSgAwIBAgIUfwcBCTteYAMNm5xaVxMsOeMgip0wCQYHKoZIzj0EATAMMQowCAYDVQQDDAF0MCAXDTI2MTIwNzEyMjQ0OFoYDzIxMjYxMTEzMTIyNDQ4WjAMMQowCAYDVQQDDAF0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEA2X6mJ+MVjLsGI5ofojr6W6+BkTSeWaBobU17IAzQU35EXPeq5QhL5FAUV+CdhB3Qs2TOM+4sdOn11y87OSnkKNTMFEwHQYDVR0OBBYEFLt7+pOlMVsjGGZXop5MC73wukm0MB8GA1UdIwQYMBaAFLt7+pOlMVsjGGZXop5MC73wukm0MA8GA1UdEwEB/wQFMAMBAf8wCQYHKoZIzj0EAQNJADBGAiEAuvEdDzDe9+m7ipJ1l6C69VZ+5FZOx93bLCQ0PmA8CB8CIQDqeVLi/IAwJUApMWagTUFcGMT4VShxDKFmSd4NjM2Aqw==";
    const EC_SHA1_HASH: &str = "272321736254f678e8647dde52e2ccfd9bf811b893836308d089c9d7056ebb4c";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn end_point_hash_of_real_certificates_matches_sha_tools() {
        let der = BASE64.decode(EC_SHA384).expect("b64");
        assert_eq!(
            hex(&tls_server_end_point(&der).expect("hash")),
            EC_SHA384_HASH
        );
        let der = BASE64.decode(EC_SHA1).expect("b64");
        assert_eq!(
            hex(&tls_server_end_point(&der).expect("hash")),
            EC_SHA1_HASH
        );
    }

    fn oid(s: &str) -> ObjectIdentifier {
        ObjectIdentifier::new(s).expect("oid")
    }

    #[test]
    fn hash_follows_the_signature_algorithm_with_md5_and_sha1_upgraded() {
        assert_eq!(hash_for(&oid("1.2.840.113549.1.1.4")), Ok(Hash::Sha256));
        assert_eq!(hash_for(&oid("1.2.840.113549.1.1.5")), Ok(Hash::Sha256));
        assert_eq!(hash_for(&oid("1.2.840.113549.1.1.11")), Ok(Hash::Sha256));
        assert_eq!(hash_for(&oid("1.2.840.113549.1.1.12")), Ok(Hash::Sha384));
        assert_eq!(hash_for(&oid("1.2.840.113549.1.1.13")), Ok(Hash::Sha512));
        assert_eq!(hash_for(&oid("1.2.840.10045.4.1")), Ok(Hash::Sha256));
        assert_eq!(hash_for(&oid("1.2.840.10045.4.3.3")), Ok(Hash::Sha384));
        // RSASSA-PSS and Ed25519: no single hash, no binding (as Postgres).
        for o in ["1.2.840.113549.1.1.10", "1.3.101.112"] {
            let e = hash_for(&oid(o)).expect_err(o);
            assert!(e.to_string().contains(o), "{e}");
        }
    }

    #[test]
    fn gs2_headers_and_c_attributes() {
        assert_eq!(Gs2::NotSupported.header(), "n,,");
        assert_eq!(Gs2::NotSupported.c_attribute(), "biws");
        assert_eq!(Gs2::NotOffered.header(), "y,,");
        assert_eq!(Gs2::NotOffered.c_attribute(), "eSws");
        let p = Gs2::TlsServerEndPoint(vec![1, 2, 3]);
        assert_eq!(p.header(), "p=tls-server-end-point,,");
        let decoded = BASE64.decode(p.c_attribute()).expect("b64");
        assert_eq!(decoded, b"p=tls-server-end-point,,\x01\x02\x03");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(
            tls_server_end_point(b"not a certificate"),
            Err(ChannelBindingError::BadCertificate)
        );
        assert_eq!(
            tls_server_end_point(&[]),
            Err(ChannelBindingError::BadCertificate)
        );
    }
}
