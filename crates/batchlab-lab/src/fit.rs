//! Fits of experiment results. (STUB)
