//! quern registry.
