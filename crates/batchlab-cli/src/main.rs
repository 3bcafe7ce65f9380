//! The `batchlab` binary.

fn main() {
    println!("batchlab");
}
