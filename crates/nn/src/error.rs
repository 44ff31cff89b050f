/// Everything the layers, the loss, the optimizer and checkpoints can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Op(#[from] kernels::Error),
    /// A tensor of the wrong shape handed to a layer, the loss or the network; `name` says which.
    #[error("{name}: {what}")]
    Shape { name: String, what: String },
    #[error("checkpoint {path}: {what}")]
    Checkpoint { path: String, what: String },
    /// A file that could not be written (see [`crate::write_atomically`]); the old one is intact.
    #[error("writing {path}: {what}")]
    Write { path: String, what: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An [`Error::Shape`] unless `shape` is `expected`.
pub(crate) fn expect_shape(
    name: &str,
    what: &str,
    shape: &[usize],
    expected: &[usize],
) -> Result<()> {
    if shape == expected {
        Ok(())
    } else {
        Err(Error::Shape {
            name: name.to_string(),
            what: format!("{what} has shape {shape:?}, expected {expected:?}"),
        })
    }
}
