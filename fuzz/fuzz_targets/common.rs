//! What both submission targets share: the policy they run under and the
//! check that a reply is well formed on the wire.

use std::path::Path;
use std::sync::Arc;
use trackrelay::config::Config;
use trackrelay::submission::policy::Policy;

/// A user `app` for example.com, 10.0.0.0/8 trusted, two domains.
pub fn policy() -> Arc<Policy> {
    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$vVVq6pyMo/HWwFDiBzXNfQ$KHlKSqwelqUQYyobq8XZzRLNH8qcUlLuVSnd98FHfuo";
    let text = format!(
        "[server]\nhostname = \"relay.test\"\n[submission]\ntrusted_networks = [\"10.0.0.0/8\"]\n\
         [[submission.users]]\nname = \"app\"\npassword_hash = \"{HASH}\"\ndomains = [\"example.com\"]\n\
         [[domains]]\nname = \"example.com\"\n[[domains]]\nname = \"example.org\"\n"
    );
    let config = Config::parse(&text, Path::new("/fuzz.toml")).expect("the fuzz config parses");
    Arc::new(Policy::from_config(&config))
}

/// Every line `ddd text` or `ddd-text`, CRLF-terminated, printable between.
pub fn assert_replies_well_formed(out: &[u8]) {
    assert!(
        out.is_empty() || out.ends_with(b"\r\n"),
        "unterminated reply"
    );
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = line.strip_suffix(b"\r").expect("every line ends with CRLF");
        assert!(line.len() >= 4, "short reply line {line:?}");
        assert!(
            line[..3].iter().all(u8::is_ascii_digit),
            "no code: {line:?}"
        );
        assert!(matches!(line[3], b' ' | b'-'), "bad separator: {line:?}");
        let text = std::str::from_utf8(line).expect("replies are UTF-8");
        assert!(
            !text.chars().any(char::is_control),
            "control character in reply {text:?}"
        );
    }
}
