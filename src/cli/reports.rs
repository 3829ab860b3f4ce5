//! `trackrelay reports show ID [--raw]`: a report the return-path MX
//! received (a bounce, a complaint), as the operator reads it.

use super::open_store;
use super::CliResult;
use crate::config::Config;
use crate::store::feedback::ReportInfo;
use crate::text::printable;
use std::io::Write;

pub fn show(config: &Config, id: i64, raw: bool) -> CliResult {
    let (rt, store) = open_store(config)?;
    let report = rt.block_on(store.report(id));
    store.close();
    let report = report
        .map_err(|e| format!("reading the store: {e}"))?
        .ok_or_else(|| {
            format!("no report with id {id} (reports that named no email are not kept)")
        })?;
    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
    let written = if raw {
        // Exactly the bytes received, for a mail tool or a file.
        w.write_all(&report.raw)
    } else {
        write_shown(&mut w, &report)
    };
    match written.and_then(|()| w.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("writing the output: {e}"))
        }
        _ => Ok(()),
    }
}

/// Metadata, then the message with every control character escaped: the
/// report comes from anyone on the internet and must not drive the
/// terminal.
fn write_shown(w: &mut impl Write, r: &ReportInfo) -> std::io::Result<()> {
    if let serde_json::Value::Object(m) = r.metadata_json() {
        for (k, v) in m {
            let v = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            writeln!(w, "{k:<13} {}", printable(&v))?;
        }
    }
    writeln!(w)?;
    let text = String::from_utf8_lossy(&r.raw);
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        writeln!(w, "{}", printable(line))?;
    }
    Ok(())
}
