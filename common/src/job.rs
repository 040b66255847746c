//! Counts the API calls in flight, so a daemon neither exits on `--timeout` nor
//! finishes its shutdown while one is still running.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many calls are running right now.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

/// Held for the length of one call; dropping it ends the call.
#[must_use = "the call counts as running only while the guard lives"]
pub struct Call<'a>(&'a AtomicUsize);

impl InFlight {
    pub const fn new() -> Self {
        InFlight(AtomicUsize::new(0))
    }

    /// Counts one call until the returned guard is dropped.
    pub fn enter(&self) -> Call<'_> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Call(&self.0)
    }

    /// True when no call is running.
    pub fn idle(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nested_calls() {
        let f = InFlight::new();
        assert!(f.idle());
        let a = f.enter();
        let b = f.enter();
        drop(a);
        assert!(!f.idle());
        drop(b);
        assert!(f.idle());
    }
}
