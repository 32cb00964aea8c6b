//! The fleet store over HTTPS: ClickHouse (Debian's 18.16) serving a certificate of a CA the test makes;
//! `hunt --fleet https://...` with `--fleet-tls-ca` and `ingest --into https://...` with
//! `--clickhouse-tls-ca` reach it, a certificate no trusted CA vouches for is refused, and CA files that
//! are not one are clear errors.

#![expect(unused_crate_dependencies, reason = "a test target sees every dev-dependency of the package")]

use std::path::{Path, PathBuf};
use std::process::Command;

use monitor_fleet::clickhouse::{ClickHouse, FleetSql as _};
use monitor_fleet::row::to_row;
use monitor_fleet::servers::ClickHouseServer;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, and a certificate it signs for 127.0.0.1: (ca.pem, server.pem, server.key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=monitor test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
        ],
    );
    // ClickHouse runs as this user and reads the key itself.
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

fn event(seq: u64) -> Vec<u8> {
    format!(
        r#"{{"Table":"DeviceNetworkEvents","Timestamp":"2026-12-02T03:00:00.000001Z","DeviceId":"tls-1","Seq":{seq},
        "DeviceName":"tls-agent","ActionType":"ConnectionSuccess","RemoteIP":"10.0.0.1","RemotePort":3128,
        "RemoteUrl":"origin.test","Protocol":"Tcp","AdditionalFields":{{}}}}"#
    )
    .into_bytes()
}

#[test]
fn the_fleet_store_over_https_trusts_only_its_ca() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (ca, certificate, key) = certificates(dir.path());
    let server = ClickHouseServer::start_https(&certificate, &key)
        .unwrap_or_else(|e| panic!("start clickhouse-server: {e}"));
    let url = server.https_url("fleet").expect("an https port");

    // With the CA: the schema, an insert and a fleet query, all over TLS.
    let fleet =
        ClickHouse::new(&url, None, None).and_then(|c| c.with_tls_ca(&ca)).expect("an https URL and a CA");
    fleet.ensure_schema().unwrap_or_else(|e| panic!("create the tables over https: {e}\n{}", server.log()));
    let rows: Vec<_> = (1..=3).map(|seq| to_row(&event(seq)).expect("a valid event").1).collect();
    fleet.insert("DeviceNetworkEvents", &rows).expect("insert over https");
    let args = monitor_hunt::cli::FleetArgs {
        url: Some(url.clone()),
        user: None,
        password: None,
        tls_ca: Some(ca.clone()),
    };
    let hunted = monitor_fleet::hunt::connect(&args).expect("--fleet https with --fleet-tls-ca");
    let result =
        monitor_fleet::hunt::query_at(&hunted, "DeviceNetworkEvents | summarize count() by DeviceName", 0)
            .expect("hunt --fleet over https");
    assert_eq!(result.rows.len(), 1, "{:?}", result.rows);
    assert_eq!(result.rows[0][1], monitor_hunt::Value::Long(3), "{:?}", result.rows);

    // `monitor ingest --into https://... --clickhouse-tls-ca` builds the same client.
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Ingest {
        #[command(flatten)]
        args: monitor_fleet::cli::IngestArgs,
    }
    let ca_text = ca.display().to_string();
    let ingest = Ingest::parse_from([
        "ingest",
        "--from",
        "nats://127.0.0.1:4222",
        "--into",
        &url,
        "--clickhouse-tls-ca",
        &ca_text,
    ]);
    let options = ingest.args.options().expect("ingest options with an https store");
    assert_eq!(
        options.clickhouse.query_rows("SELECT 1 AS one").expect("the ingest's client over https")[0]["one"],
        1
    );

    // Without the CA, the well-known roots do not vouch for the test CA's certificate.
    let untrusted = ClickHouse::new(&url, None, None).expect("an https URL");
    let err = untrusted.query_rows("SELECT 1").expect_err("an unknown issuer").to_string();
    assert!(err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"), "{err}");

    // CA files that are not one, and a CA for a plain-HTTP URL.
    let err =
        ClickHouse::new(&url, None, None).and_then(|c| c.with_tls_ca(&key)).expect_err("a key").to_string();
    assert!(err.contains("holds no PEM certificate"), "{err}");
    let missing = dir.path().join("missing.pem");
    let err = ClickHouse::new(&url, None, None)
        .and_then(|c| c.with_tls_ca(&missing))
        .expect_err("no file")
        .to_string();
    assert!(err.contains("read the ClickHouse CA file"), "{err}");
    let err = ClickHouse::new(&server.url("fleet"), None, None)
        .and_then(|c| c.with_tls_ca(&ca))
        .expect_err("http with a CA")
        .to_string();
    assert!(err.contains("is for an https:// URL"), "{err}");
}
