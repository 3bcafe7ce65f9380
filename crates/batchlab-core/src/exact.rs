//! Order-independent exact reduction. (STUB)
