//! `server.node_id` names the node in its metrics (several nodes sharing
//! one PostgreSQL store tell themselves apart), and a bad one is refused
//! naming the key.

mod harness;

use harness::*;

#[test]
fn metrics_name_the_node_and_its_store() {
    let relay = Relay::start(Options {
        server: "node_id = \"relay-7\"".into(),
        api_token: true,
        ..Options::default()
    });
    let auth = format!("Bearer {API_TOKEN}");
    let (status, _, body) = http(relay.api, "GET", "/metrics", &[("Authorization", &auth)]);
    assert_eq!(status, 200);
    let body = String::from_utf8(body).unwrap();
    let backend = if relay.pg_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let line = format!("trackrelay_node_info{{node=\"relay-7\",store=\"{backend}\"}} 1");
    assert!(body.lines().any(|l| l == line), "{line} missing:\n{body}");
}

#[test]
fn a_node_id_that_is_not_a_plain_name_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[server]\nhostname = \"relay.test\"\nnode_id = \"two words\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.node_id: \"two words\""), "{err}");
}
