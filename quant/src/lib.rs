//! quern block formats.
