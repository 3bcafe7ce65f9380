//! The training step. (STUB)
