//! The Protobuf wire format (`centrifuge-protobuf`): commands and replies as
//! varint-length-delimited messages in binary frames.
//!
//! Not built yet.
