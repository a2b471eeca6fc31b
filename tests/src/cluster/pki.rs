//! A throwaway PKI for a test cluster (rcgen): one CA, the apiserver's serving certificate, a
//! client certificate per component, the service-account signing key. Written as PEM files
//! into the cluster's directory; nothing outside it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What the cluster's components are given.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: CertFiles,
    pub apiserver: CertFiles,
    /// The apiserver's client certificate towards kubelets.
    pub apiserver_kubelet_client: CertFiles,
    pub admin: CertFiles,
    pub controller_manager: CertFiles,
    pub scheduler: CertFiles,
    /// The kubelet's client certificate (`system:node:<node>`).
    pub kubelet: CertFiles,
    /// The kubelet's serving certificate (for the node IP).
    pub kubelet_serving: CertFiles,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    if let Some(o) = org {
        d.push(DnType::OrganizationName, o);
    }
    d
}

fn write(dir: &Path, name: &str, cert: &str, key: &KeyPair) -> Result<CertFiles> {
    let files = CertFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert, cert).with_context(|| format!("writing {name}.crt"))?;
    std::fs::write(&files.key, key.serialize_pem())
        .with_context(|| format!("writing {name}.key"))?;
    Ok(files)
}

/// Generates everything into `dir` for a node called `node` at `node_ip`, with the apiserver
/// reachable at `service_ip` (the first address of the service range) too.
pub fn generate(dir: &Path, node: &str, node_ip: IpAddr, service_ip: IpAddr) -> Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = dn("isola-test-ca", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = write(dir, "ca", &ca_cert.pem(), &ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |name: &str,
                cn: &str,
                org: Option<&str>,
                server: bool,
                sans: Vec<SanType>|
     -> Result<CertFiles> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name = dn(cn, org);
        p.subject_alt_names = sans;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = p.signed_by(&key, &issuer)?;
        write(dir, name, &cert.pem(), &key)
    };
    let dns = |s: &str| Ok::<_, anyhow::Error>(SanType::DnsName(s.try_into()?));
    let apiserver = leaf(
        "apiserver",
        "kube-apiserver",
        None,
        true,
        vec![
            dns("kubernetes")?,
            dns("kubernetes.default")?,
            dns("kubernetes.default.svc")?,
            dns("kubernetes.default.svc.cluster.local")?,
            dns("localhost")?,
            SanType::IpAddress(node_ip),
            SanType::IpAddress(service_ip),
            SanType::IpAddress("127.0.0.1".parse()?),
        ],
    )?;
    let kubelet_serving = leaf(
        "kubelet-serving",
        &format!("system:node:{node}"),
        Some("system:nodes"),
        true,
        vec![dns(node)?, SanType::IpAddress(node_ip)],
    )?;
    let sa_key = KeyPair::generate()?;
    let service_account_key = dir.join("sa.key");
    let service_account_pub = dir.join("sa.pub");
    std::fs::write(&service_account_key, sa_key.serialize_pem())?;
    std::fs::write(&service_account_pub, sa_key.public_key_pem())?;
    Ok(Pki {
        apiserver_kubelet_client: leaf(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
            false,
            vec![],
        )?,
        admin: leaf(
            "admin",
            "isola-test-admin",
            Some("system:masters"),
            false,
            vec![],
        )?,
        controller_manager: leaf(
            "controller-manager",
            "system:kube-controller-manager",
            None,
            false,
            vec![],
        )?,
        scheduler: leaf("scheduler", "system:kube-scheduler", None, false, vec![])?,
        kubelet: leaf(
            "kubelet",
            &format!("system:node:{node}"),
            Some("system:nodes"),
            false,
            vec![],
        )?,
        ca,
        apiserver,
        kubelet_serving,
        service_account_key,
        service_account_pub,
    })
}

/// A kubeconfig for `user` with `creds`, talking to `server`.
pub fn kubeconfig(server: &str, ca: &Path, user: &str, creds: &CertFiles) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: isola-test\n  cluster:\n    \
         server: {server}\n    certificate-authority: {ca}\ncontexts:\n- name: {user}@isola-test\n  \
         context:\n    cluster: isola-test\n    user: {user}\ncurrent-context: {user}@isola-test\n\
         users:\n- name: {user}\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n",
        ca = ca.display(),
        cert = creds.cert.display(),
        key = creds.key.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pki_and_a_kubeconfig_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(
            dir.path(),
            "node-a",
            "10.99.255.1".parse().unwrap(),
            "10.96.0.1".parse().unwrap(),
        )
        .unwrap();
        for f in [
            &pki.ca.cert,
            &pki.apiserver.key,
            &pki.kubelet.cert,
            &pki.service_account_pub,
        ] {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{}: {text}", f.display());
        }
        let k = kubeconfig("https://127.0.0.1:6443", &pki.ca.cert, "admin", &pki.admin);
        assert!(k.contains("server: https://127.0.0.1:6443"), "{k}");
        assert!(k.contains(&pki.admin.key.display().to_string()), "{k}");
    }
}
