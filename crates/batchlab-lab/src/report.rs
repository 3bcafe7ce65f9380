//! Reports: HTML with SVG plots, and terminal summaries. (STUB)
