//! A bounded record of the `Authorization` headers a test server received: the count, the
//! most recent ones in order, and the distinct values, each capped, so that a long soak
//! measures the host rather than the recorder's memory.

use std::collections::{HashSet, VecDeque};

/// How many recent headers are kept in order.
pub const RECENT: usize = 4096;
/// How many distinct header values are kept (later new ones are counted only).
pub const DISTINCT: usize = 4096;

/// The record (behind the server's mutex).
#[derive(Debug, Default)]
pub(crate) struct AuthorizationLog {
    count: u64,
    recent: VecDeque<Option<String>>,
    distinct: Vec<String>,
    seen: HashSet<String>,
}

impl AuthorizationLog {
    /// Records one request's header.
    pub(crate) fn push(&mut self, value: Option<String>) {
        self.count += 1;
        if let Some(v) = &value {
            if self.seen.len() < DISTINCT && !self.seen.contains(v) {
                self.seen.insert(v.clone());
                self.distinct.push(v.clone());
            }
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(value);
    }

    /// Requests recorded.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// The most recent headers (at most [`RECENT`]), oldest first.
    pub(crate) fn recent(&self) -> Vec<Option<String>> {
        self.recent.iter().cloned().collect()
    }

    /// The distinct header values (at most [`DISTINCT`]), in the order first seen.
    pub(crate) fn distinct(&self) -> Vec<String> {
        self.distinct.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_stays_bounded_and_keeps_order_count_and_distinct_values() {
        let mut log = AuthorizationLog::default();
        log.push(None);
        for i in 0..3 * RECENT {
            log.push(Some(format!("Bearer t{}", i % 3)));
        }
        for i in 0..2 * DISTINCT {
            log.push(Some(format!("Basic {i}")));
        }
        assert_eq!(log.count(), (1 + 3 * RECENT + 2 * DISTINCT) as u64);
        let recent = log.recent();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(
            recent.last().cloned().flatten().as_deref(),
            Some(format!("Basic {}", 2 * DISTINCT - 1).as_str())
        );
        let distinct = log.distinct();
        assert_eq!(distinct.len(), DISTINCT);
        assert_eq!(&distinct[..3], ["Bearer t0", "Bearer t1", "Bearer t2"]);
    }
}
