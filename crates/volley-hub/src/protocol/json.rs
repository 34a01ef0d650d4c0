//! The JSON wire format: newline-delimited commands in, newline-delimited replies and
//! pushes out, several to a frame.
//!
//! Not built yet.
