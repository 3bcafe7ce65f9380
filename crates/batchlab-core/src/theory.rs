//! Closed forms of the noisy quadratic model (science.md). (STUB: to be implemented.)
