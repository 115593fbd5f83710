//! `sinkron certs`: a cluster CA and one certificate per node, for a quick TLS set-up.
//!
//! Each node certificate serves both ends of mutual TLS (server and client
//! authentication) and names the node, `localhost`, `127.0.0.1` and every `--host`.
//! When the directory already holds a CA (`ca.pem`, `ca-key.pem`), it signs the new
//! certificates, so a node can be added or its certificate renewed without touching the
//! others.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// The common name of every CA this command makes (a CA loaded again is rebuilt with it).
const CA_NAME: &str = "Sinkron cluster CA";

#[derive(clap::Args)]
pub struct CertsArgs {
    /// Node names (NODE_ID), one certificate each.
    #[arg(required = true)]
    nodes: Vec<String>,
    /// Directory to write to: ca.pem, ca-key.pem, NODE.pem, NODE-key.pem.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// More names or addresses every node certificate is valid for (repeatable), such as
    /// the hosts or IPs in CLUSTER_ADDRS.
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Years the certificates are valid.
    #[arg(long, default_value_t = 2)]
    years: u16,
    /// Certificates for servers only, such as a load balancer in front of the nodes: they
    /// cannot be presented as a client certificate, so they cannot pose as a node.
    #[arg(long)]
    server_only: bool,
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let usage = if args.server_only { Usage::ServerOnly } else { Usage::Node };
    let made = make(&args.dir, &args.nodes, &args.hosts, args.years, usage)?;
    say!("CA: {}", args.dir.join("ca.pem").display());
    for (node, cert, key) in made {
        say!("{node}: TLS_CERT_FILE={} TLS_KEY_FILE={}", cert.display(), key.display());
    }
    say!("Every node: TLS_CA_FILE={}", args.dir.join("ca.pem").display());
    Ok(())
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Both ends of mutual TLS: a node.
    Node,
    /// A server only (a load balancer), never a client certificate.
    ServerOnly,
}

/// Makes (or reuses) the CA in `dir` and a certificate for each of `nodes`; returns each
/// node's certificate and key paths.
pub fn make(
    dir: &Path,
    nodes: &[String],
    hosts: &[String],
    years: u16,
    usage: Usage,
) -> anyhow::Result<Vec<(String, PathBuf, PathBuf)>> {
    anyhow::ensure!((1..=30).contains(&years), "--years must be 1 to 30");
    for node in nodes {
        sinkron_core::limits::validate_node_name(node)
            .map_err(|e| anyhow::anyhow!("node name {node:?}: {e}"))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let (ca_cert, ca_key) = ca(dir, years)?;
    let mut made = Vec::new();
    for node in nodes {
        let mut names = vec![node.clone(), "localhost".to_string(), "127.0.0.1".to_string()];
        names.extend(hosts.iter().filter(|h| !h.is_empty()).cloned());
        names.dedup();
        let mut params = CertificateParams::new(names).context("certificate names")?;
        params.distinguished_name.push(DnType::CommonName, node.as_str());
        params.extended_key_usages = match usage {
            Usage::Node => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerOnly => vec![ExtendedKeyUsagePurpose::ServerAuth],
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        validity(&mut params, years);
        let key = KeyPair::generate().context("generate a key")?;
        let cert = params.signed_by(&key, &ca_cert, &ca_key).context("sign the node certificate")?;
        let cert_path = dir.join(format!("{node}.pem"));
        let key_path = dir.join(format!("{node}-key.pem"));
        write(&cert_path, &cert.pem(), false)?;
        write(&key_path, &key.serialize_pem(), true)?;
        made.push((node.clone(), cert_path, key_path));
    }
    Ok(made)
}

/// The CA of `dir`: loaded when its key is there, else made and written.
fn ca(dir: &Path, years: u16) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let key_path = dir.join("ca-key.pem");
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    if key_path.exists() {
        // The same name and key sign exactly as the CA written before: certificates made
        // now chain to the ca.pem the nodes already trust.
        let pem =
            std::fs::read_to_string(&key_path).with_context(|| format!("read {}", key_path.display()))?;
        let key =
            KeyPair::from_pem(&pem).with_context(|| format!("{} is not a PEM key", key_path.display()))?;
        validity(&mut params, years);
        let cert = params.self_signed(&key).context("load the CA")?;
        return Ok((cert, key));
    }
    validity(&mut params, years + 1);
    let key = KeyPair::generate().context("generate the CA key")?;
    let cert = params.self_signed(&key).context("make the CA")?;
    write(&dir.join("ca.pem"), &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok((cert, key))
}

/// Valid from the start of this year (clocks a little behind still accept it) for `years`.
fn validity(params: &mut CertificateParams, years: u16) {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + i32::from(years), 1, 1);
}

fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("write {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("write {}", path.display()))
}
