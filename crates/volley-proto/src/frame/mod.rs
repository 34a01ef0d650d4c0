//! Wire types: opcodes, frame headers, close codes and masking.

pub mod close;
pub mod header;
pub mod mask;
pub mod opcode;

pub use close::{CloseCode, CloseFrame};
pub use header::{FrameHeader, HeaderError, MAX_HEADER_LEN};
pub use mask::apply_mask;
pub use opcode::{MessageKind, OpCode};
