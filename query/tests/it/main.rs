//! Query service tests against a lake the processors wrote from broker traffic.

mod api;
mod flight;
mod limits;
mod live;
mod pg;
mod pilots;
mod preagg;
mod readers;
mod slt;
mod status;
mod tls;
use hexpulse_testkit::processing as support;
