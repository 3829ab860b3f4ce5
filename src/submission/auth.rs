//! SMTP AUTH checks live in [`crate::auth`], shared with the admin API;
//! these names stay here for the CLI and the tests that use them.

pub use crate::auth::{hash_password, Authenticator, Throttle};
