//! Certificates for TLS tests, issued with rcgen: CAs, leaves, agents' certificates naming
//! their cluster, CRLs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, RevocationReason, RevokedCertParams,
    SanType, SerialNumber,
};

/// A self-signed CA.
pub fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// Issues a leaf certificate with `serial`; writes `<name>.pem` and `<name>.key` into `dir`,
/// returns the certificate's path.
pub fn leaf(
    dir: &Path,
    name: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
    serial: u64,
) -> PathBuf {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![usage];
    params.distinguished_name.push(DnType::CommonName, name);
    params.serial_number = Some(SerialNumber::from(serial));
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
    dir.join(format!("{name}.pem"))
}

/// An agent's client certificate naming `cluster` in its URI SAN (`spiffe://cplane/cluster/…`).
pub fn agent_cert(
    dir: &Path,
    name: &str,
    cluster: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    serial: u64,
) -> PathBuf {
    let uri = format!("spiffe://cplane/cluster/{cluster}");
    leaf(
        dir,
        name,
        issuer,
        vec![SanType::URI(uri.try_into().expect("uri"))],
        ExtendedKeyUsagePurpose::ClientAuth,
        serial,
    )
}

/// A PEM CRL of `issuer` revoking the certificates with these serials.
pub fn crl(issuer: &CertifiedIssuer<'static, KeyPair>, revoked: &[u64]) -> String {
    let params = CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2025, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|&serial| RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: rcgen::date_time_ymd(2025, 6, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(issuer).expect("CRL").pem().expect("PEM")
}
