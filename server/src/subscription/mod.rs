//! The subscription endpoint: the flow of one request, and the pure parts it
//! is built from (link rules, response headers, the panel-answer cache).

pub mod cache;
pub mod flow;
pub mod headers;
pub mod links;

pub use flow::{FlowSettings, SubscriptionRequest, Subscriptions};
