//! What the store keeps about the sending domains and their mail
//! servers' TLS: DNS status and its history, MTA-STS policies and TLS
//! report counts.

use async_trait::async_trait;

#[async_trait]
pub trait DomainStore: Send + Sync {}
