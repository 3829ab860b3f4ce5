//! The tracking listener: the open pixel and the click redirect, answered
//! from the token alone, with every valid request recorded as an event (or
//! folded into a recent one of the same client, see `aggregate`) and
//! machine activity flagged; and the one-click unsubscribe URL
//! (`unsubscribe`).

pub mod aggregate;
pub mod classify;
pub mod listener;
pub mod recorder;
pub mod server;
pub mod unsubscribe;
