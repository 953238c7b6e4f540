//! [`Memo`]: a value computed once per connection by a fallible function (a discovered
//! endpoint, a resolved authority). A failure is not remembered: the next call tries again.

use crate::Result;
use std::sync::Mutex;

/// A fallible once-cell. The lock is held while the value is computed, so concurrent callers
/// wait for one computation instead of each doing it. `Debug` shows only whether it is set.
pub struct Memo<T>(Mutex<Option<T>>);

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> std::fmt::Debug for Memo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.lock().map(|v| v.is_some()).unwrap_or(false);
        f.write_str(if set { "Memo(set)" } else { "Memo(empty)" })
    }
}

impl<T> Memo<T> {
    /// An empty memo.
    pub const fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// A memo that already holds `value` (e.g. a configured endpoint that needs no discovery).
    pub fn with(value: T) -> Self {
        Self(Mutex::new(Some(value)))
    }

    /// Forgets the value, so the next [`Memo::get_or_try_init`] computes it again.
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl<T: Clone> Memo<T> {
    /// The value, computing it with `init` if it is not there yet.
    pub fn get_or_try_init(&self, init: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = slot.as_ref() {
            return Ok(v.clone());
        }
        let v = init()?;
        *slot = Some(v.clone());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use std::cell::Cell;

    #[test]
    fn computes_once_remembers_no_failure_and_can_be_cleared() {
        let memo = Memo::new();
        let calls = Cell::new(0);
        let fail = || -> Result<String> {
            calls.set(calls.get() + 1);
            Err(Error::network("down"))
        };
        assert_eq!(memo.get_or_try_init(fail).unwrap_err().message(), "down");
        assert_eq!(format!("{memo:?}"), "Memo(empty)");
        let ok = || {
            calls.set(calls.get() + 1);
            Ok("secret-endpoint".to_string())
        };
        assert_eq!(memo.get_or_try_init(ok).unwrap(), "secret-endpoint");
        assert_eq!(memo.get_or_try_init(ok).unwrap(), "secret-endpoint");
        assert_eq!(calls.get(), 2, "one failure, one success, then cached");
        assert_eq!(format!("{memo:?}"), "Memo(set)");
        memo.clear();
        memo.get_or_try_init(ok).unwrap();
        assert_eq!(calls.get(), 3);
        assert_eq!(Memo::with(5).get_or_try_init(|| Ok(6)).unwrap(), 5);
    }
}
