//! HTTP routes. Handlers parse, authorize, call one service function and
//! render; rules live in `service`.

pub mod account;
pub mod api_keys;
pub mod preview;
pub mod runners;
pub mod sandbox;
pub mod secrets;
pub mod snapshots;
pub mod system;
pub mod terminal;
pub mod toolbox;
pub mod volumes;
pub mod warm_pools;
