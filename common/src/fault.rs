//! The error domain every crate's errors answer to: whose fault an error is, and whether trying
//! again can help. Decisions (retry a flush, stop a partition, answer 4xx or 5xx, wait for the
//! next sealing round) read [`Classify`], never an error's message.

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The caller's input or the operator's configuration (a bad URL, a missing permission, a
    /// rules file that does not parse): the same request fails the same way until they change it.
    User,
    /// Something we depend on failed (object store, broker, network): trying again later may
    /// succeed.
    External,
    /// A broken invariant on our side (data we wrote that does not decode, a schema that does not
    /// match): trying again does not help, and someone must look.
    Internal,
}

/// An error that knows its [`Fault`] and whether to retry it.
pub trait Classify {
    /// Whose fault the error is.
    fn fault(&self) -> Fault;

    /// Whether the same operation, tried again later, may succeed. By default: external faults.
    fn retryable(&self) -> bool {
        self.fault() == Fault::External
    }
}
