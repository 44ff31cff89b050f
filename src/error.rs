use thiserror::Error;

/// Everything an op can fail with. Every message names the op or kernel it comes from.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{op}: {what}")]
    Shape { op: &'static str, what: String },
    #[error("device {device}: {what}")]
    Device { device: String, what: String },
    #[error("kernel {kernel}: {what}")]
    Launch { kernel: String, what: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
