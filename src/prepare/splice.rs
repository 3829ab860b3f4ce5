//! Byte-range edits applied to an original buffer: everything between the
//! edits is copied as it was.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Splice {
    pub range: Range<usize>,
    pub with: Vec<u8>,
}

impl Splice {
    pub fn replace(range: Range<usize>, with: Vec<u8>) -> Self {
        Splice { range, with }
    }

    pub fn insert(at: usize, with: Vec<u8>) -> Self {
        Splice {
            range: at..at,
            with,
        }
    }
}

/// Applies edits that must not overlap; an overlap or an out-of-range edit
/// is a bug upstream, reported rather than guessed around.
pub(crate) fn apply(src: &[u8], mut splices: Vec<Splice>) -> Result<Vec<u8>, String> {
    splices.sort_by_key(|s| (s.range.start, s.range.end));
    let grow: usize = splices.iter().map(|s| s.with.len()).sum();
    let mut out = Vec::with_capacity(src.len() + grow);
    let mut pos = 0;
    for s in splices {
        if s.range.start < pos || s.range.end < s.range.start || s.range.end > src.len() {
            return Err(format!(
                "internal error: overlapping or out-of-range edit {:?} (at {pos} of {})",
                s.range,
                src.len()
            ));
        }
        out.extend_from_slice(&src[pos..s.range.start]);
        out.extend_from_slice(&s.with);
        pos = s.range.end;
    }
    out.extend_from_slice(&src[pos..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_in_order_and_refuses_overlaps() {
        let src = b"0123456789";
        let out = apply(
            src,
            vec![
                Splice::replace(5..7, b"x".to_vec()),
                Splice::insert(2, b"ab".to_vec()),
                Splice::replace(2..3, Vec::new()),
            ],
        )
        .unwrap();
        assert_eq!(out, b"01ab34x789");
        assert!(apply(
            src,
            vec![Splice::replace(1..4, vec![]), Splice::replace(3..5, vec![])]
        )
        .is_err());
        assert!(apply(src, vec![Splice::replace(9..11, vec![])]).is_err());
    }
}
