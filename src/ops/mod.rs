//! Operator commands: each orchestrates the pipeline's stages, never
//! re-implements them.

pub mod audit;
pub mod demo;
pub mod status;
pub mod stream;
pub mod tail;
pub mod verify;
