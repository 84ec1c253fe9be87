//! The host side of the WIT plugin worlds: load, sandbox and call policy plugins.

#[allow(missing_docs)]
pub mod bindings;

pub use bindings::types;
