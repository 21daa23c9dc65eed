//! Typed messages: the wire protocol (`wire`), and actor messages grouped by
//! the actor that receives them.
pub mod wire;
