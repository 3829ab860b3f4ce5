//! The return-path MX side: what comes back (bounces, complaints,
//! unsubscribe mail) and what is done with it.

pub mod process;
