//! Reading datasets from files: MNIST-format IDX and CSV (label column + features).
//! (STUB: to be implemented.)
