//! The host side of the WIT plugin worlds: load, sandbox and call policy plugins.
