//! Per-recipient message preparation (pure, no I/O).
