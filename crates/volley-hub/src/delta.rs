//! Fossil deltas: publications sent as the difference from the previous one, in the
//! format centrifuge-js and centrifuge-python decode.
//!
//! Not built yet.
