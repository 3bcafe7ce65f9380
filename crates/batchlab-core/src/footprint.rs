//! What a run will allocate, estimated from its settings before anything is allocated.
//!
//! A batch of 10¹¹, hidden widths of 10⁶ or a label of 4·10⁹ in a data file would each ask for
//! terabytes; the kernel would kill the process after minutes, leaving a half-written folder.
//! [`TrainConfig::build`](crate::train::TrainConfig::build) adds up what the settings imply
//! (parameters and every per-parameter buffer, the microbatch's sample indices, the sampler's
//! epoch permutation, materialized datasets) and refuses a run above `memory_limit_gb`, naming
//! the setting behind the largest item. Sizes are in `u128` and saturate, so no setting can
//! wrap the arithmetic.

use crate::ConfigError;

/// Bytes the run keeps per model parameter, as `f64` words: the parameters, the gradient, the
/// step's accumulator and the previous gradient (two-batch estimate), the nested-prefix sums,
/// the optimizer's state (at most two buffers) and a fixed-point packet of two words, plus
/// one for the worker's copies. An upper bound, not an exact count.
pub const WORDS_PER_PARAM: u128 = 10;

/// One item of a [`Footprint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The setting (dotted path) that makes the item as large as it is.
    pub setting: String,
    /// That setting's value, as the user would write it.
    pub value: String,
    /// What is allocated.
    pub what: String,
    /// Its size in bytes.
    pub bytes: u128,
}

/// The estimated allocations of a run, item by item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Footprint {
    items: Vec<Item>,
}

impl Footprint {
    /// An empty footprint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `count · size` bytes of `what`, due to `setting = value` (saturating).
    pub fn add(
        &mut self,
        (setting, value): (&str, impl std::fmt::Display),
        what: impl Into<String>,
        count: u128,
        size: u128,
    ) {
        self.items.push(Item {
            setting: setting.to_string(),
            value: value.to_string(),
            what: what.into(),
            bytes: count.saturating_mul(size),
        });
    }

    /// Adds every item of `other`.
    pub fn extend(&mut self, other: &Footprint) {
        self.items.extend(other.items.iter().cloned());
    }

    /// The items, in the order added.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// Total bytes (saturating).
    pub fn total(&self) -> u128 {
        self.items
            .iter()
            .fold(0u128, |s, i| s.saturating_add(i.bytes))
    }

    /// `Ok` when the total is at most `limit` bytes; otherwise an error naming the largest item,
    /// its setting, and how to raise the limit.
    pub fn check(&self, limit: u64) -> Result<(), ConfigError> {
        let total = self.total();
        if total <= u128::from(limit) {
            return Ok(());
        }
        let largest = self
            .items
            .iter()
            .max_by_key(|i| i.bytes)
            .expect("a total above the limit has an item");
        Err(ConfigError::invalid(
            largest.setting.clone(),
            format!(
                "{} ({}: {} of about {} the run would allocate)",
                largest.value,
                largest.what,
                human_bytes(largest.bytes),
                human_bytes(total)
            ),
            format!(
                "a run within memory_limit_gb = {:.1} (lower {}, or raise the limit with \
                 --set memory_limit_gb=N)",
                limit as f64 / 1e9,
                largest.setting
            ),
        ))
    }
}

/// `123 B`, `4.2 MB`, `8.0 TB`, … (decimal units).
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut x = bytes as f64;
    let mut u = 0;
    while x >= 1000.0 && u + 1 < UNITS.len() {
        x /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else if x >= 1000.0 {
        format!("{x:.2e} {}", UNITS[u])
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

/// The default memory limit of a run in bytes: 80 % of this machine's physical memory
/// (`MemTotal` of `/proc/meminfo`), or 8 GB where that cannot be read.
pub fn default_limit() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total(&text))
        .map_or(8_000_000_000, |total| total / 5 * 4)
}

/// `MemTotal` in bytes from the text of `/proc/meminfo`.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then(|| kib.saturating_mul(1024))
}

/// Bytes of `limit_gb` gigabytes (10⁹ bytes), checked: a finite positive number.
pub fn limit_bytes(limit_gb: f64) -> Result<u64, ConfigError> {
    crate::error::ensure(
        limit_gb.is_finite() && limit_gb > 0.0 && limit_gb < 1.8e10,
        "memory_limit_gb",
        limit_gb,
        "a positive number of gigabytes (10⁹ bytes), e.g. 64",
    )?;
    Ok((limit_gb * 1e9) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_footprint_over_the_limit_names_its_largest_item_and_the_limit() {
        let mut f = Footprint::new();
        f.add(("task.dim", 1000), "parameters", 1000, 80);
        f.add(
            ("micro", 6_250_000_000u64),
            "sample indices of one microbatch",
            6_250_000_000,
            8,
        );
        assert_eq!(f.total(), 80_000 + 50_000_000_000);
        assert!(f.check(60_000_000_000).is_ok());
        let e = f.check(16_000_000_000).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "micro = 6250000000 (sample indices of one microbatch: 50.0 GB of about 50.0 GB"
            ),
            "{e}"
        );
        assert!(e.contains("memory_limit_gb = 16.0"), "{e}");
        assert!(e.contains("lower micro"), "{e}");
    }

    #[test]
    fn sizes_saturate_instead_of_wrapping() {
        let mut f = Footprint::new();
        f.add(("task.hidden", "[1]"), "parameters", u128::MAX / 2, 80);
        f.add(("batch", 1), "indices", u128::MAX, u128::MAX);
        assert_eq!(f.total(), u128::MAX);
        assert!(f.check(u64::MAX).is_err());
    }

    #[test]
    fn human_bytes_uses_decimal_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1500), "1.5 kB");
        assert_eq!(human_bytes(8_000_000_000_000), "8.0 TB");
        assert_eq!(human_bytes(u128::MAX), "3.40e20 EB");
    }

    #[test]
    fn mem_total_reads_proc_meminfo() {
        let text = "MemTotal:       24514828 kB\nMemFree:  100 kB\n";
        assert_eq!(mem_total(text), Some(24_514_828 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: x kB\n"), None);
    }

    #[test]
    fn the_limit_must_be_a_positive_finite_number() {
        assert_eq!(limit_bytes(16.0).unwrap(), 16_000_000_000);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = limit_bytes(bad).unwrap_err().to_string();
            assert!(e.starts_with("memory_limit_gb = "), "{e}");
        }
    }
}
