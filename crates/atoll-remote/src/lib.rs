//! The runner protocol, between the control plane and `atoll runner` on
//! each compute host: [`server::router`] serves any
//! [`atoll_runtime_api::Runtime`] over HTTP (`/v1/…`, JSON, streams as
//! upgraded connections) and [`client::RemoteRuntime`] is the control
//! plane's `Runtime` over it. Requests carry a control-plane token
//! ([`token`]) that only the control plane can sign and only the runner it
//! names accepts; errors cross as their kinds ([`wire`]). Nothing in the
//! protocol names a host path.

pub mod client;
pub mod server;
pub mod tls;
pub mod token;
pub mod wire;

pub use client::RemoteRuntime;
pub use token::{ControlKey, ControlVerifier};
