//! The DKIM keys of every sending domain, loaded once at start. Keys that
//! trackrelay manages itself (a `dkim` entry without `private_key`) are
//! created at first start, and the DNS record to publish is logged.

use super::dkim::{generate_key, DkimAlgorithm, DkimKey};
use crate::config::Config;
use std::collections::HashMap;

/// Domain (lowercase) to its signing keys. With `create_missing`, managed
/// keys that do not exist yet are generated (RSA-2048).
pub fn domain_keys(
    config: &Config,
    create_missing: bool,
) -> Result<HashMap<String, Vec<DkimKey>>, String> {
    let mut out = HashMap::new();
    for (i, d) in config.domains.iter().enumerate() {
        let mut keys = Vec::new();
        for (j, entry) in d.dkim.iter().enumerate() {
            let key_name = format!("domains[{i}].dkim[{j}]");
            let path = config.dkim_key_path(&d.name, entry);
            let managed = entry.private_key.is_none();
            if managed && !path.exists() {
                if !create_missing {
                    return Err(format!(
                        "{key_name}: the key for {} selector {} is made at the first `trackrelay serve` ({} does not exist yet)",
                        d.name,
                        entry.selector,
                        path.display()
                    ));
                }
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("{key_name}: creating {}: {e}", dir.display()))?;
                }
                let key = generate_key(&d.name, &entry.selector, DkimAlgorithm::Rsa, &path)
                    .map_err(|e| format!("{key_name}: {e}"))?;
                tracing::warn!(
                    "generated a DKIM key for {} (selector {}) at {}; publish this DNS TXT record: {} \"{}\"",
                    d.name,
                    entry.selector,
                    path.display(),
                    key.dns_name(),
                    key.dns_record()
                );
                keys.push(key);
                continue;
            }
            let key = DkimKey::load(&d.name, &entry.selector, &path)
                .map_err(|e| format!("{key_name}.private_key: {e}"))?;
            keys.push(key);
        }
        out.insert(d.name.to_ascii_lowercase(), keys);
    }
    Ok(out)
}
