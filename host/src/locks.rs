//! One way to take a lock: a panic elsewhere does not poison it for good. Every
//! holder leaves the data whole, so the next one may use it.

use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
