//! What the store does for the feedback loop and the domains: bounce and
//! complaint reports, suppressions, domain status, MTA-STS policies and
//! TLS reports.

use async_trait::async_trait;

#[async_trait]
pub trait FeedbackStore: Send + Sync {}
