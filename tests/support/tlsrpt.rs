//! TLS-RPT reports as a receiver sees them: gunzipped, and validated
//! against RFC 8460's schema (tests/fixtures/tlsrpt-report.schema.json)
//! with Python's `jsonschema`. Shared by tests/tls_report*.rs.

use serde_json::Value;
use std::io::Read;

pub fn gunzip(gz: &[u8]) -> Value {
    let mut s = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut s)
        .expect("a gzip stream");
    serde_json::from_str(&s).expect("JSON")
}

const VALIDATE: &str = "import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
errors = list(jsonschema.Draft202012Validator(schema).iter_errors(json.load(open(sys.argv[2]))))
for e in errors:
    print('/'.join(map(str, e.absolute_path)) + ': ' + e.message)
sys.exit(1 if errors else 0)
";

/// Validates against RFC 8460's schema with Python's jsonschema. `None`
/// when the validator is not installed (a skip locally; a failure under
/// CI, where .ci/run installs it).
pub fn schema_errors(report: &Value) -> Option<String> {
    let schema = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tlsrpt-report.schema.json"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    std::fs::write(&path, report.to_string()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", VALIDATE, schema])
        .arg(&path)
        .output();
    let missing = match &out {
        Err(_) => true,
        Ok(o) => String::from_utf8_lossy(&o.stderr).contains("No module named"),
    };
    if missing {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 with jsonschema is required under CI (see .ci/run)"
        );
        eprintln!("skipping the schema check: python3 -m jsonschema is not installed");
        return None;
    }
    let o = out.unwrap();
    Some(if o.status.success() {
        String::new()
    } else {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

pub fn assert_valid(report: &Value) {
    if let Some(errors) = schema_errors(report) {
        assert!(errors.is_empty(), "schema: {errors}\n{report:#}");
    }
}

/// The rows of `tls-reports list --json` (one JSON object a line).
pub fn rows_of(out: &std::process::Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect()
}

pub fn row<'a>(rows: &'a [Value], domain: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["policy_domain"] == domain)
}
