//! Operator commands: each orchestrates the pipeline's stages, never
//! re-implements them.

pub mod demo;
pub mod stream;
pub mod tail;
pub mod verify;
