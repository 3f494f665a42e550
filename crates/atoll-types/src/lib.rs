//! Types shared across Atoll's planes: Daytona's error body, timestamps in
//! the formats Daytona's wire uses, and the sandbox DTOs.

pub mod dockerfile;
pub mod error_body;
pub mod failpoint;
pub mod image_ref;
pub mod state;
pub mod time;

pub use error_body::ErrorBody;
pub use state::SandboxState;
