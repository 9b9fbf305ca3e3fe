//! Queries out per upstream on one shard, for the health view (`/upstreams`):
//! a count per upstream of the set, raised while a flight holds a query to it
//! (its pending entry, or its TCP retry) and lowered when the hold goes.

use crate::health::UpstreamIdx;
use std::cell::Cell;
use std::rc::Rc;

/// One count per upstream of a set, shared by that set's flights.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight(Rc<[Cell<u32>]>);

impl InFlight {
    /// Zero for each of `n` upstreams.
    pub(crate) fn new(n: usize) -> Self {
        Self((0..n).map(|_| Cell::new(0)).collect())
    }

    /// Queries to `up` out now (0 for an unknown index).
    pub(crate) fn get(&self, up: UpstreamIdx) -> u32 {
        self.0.get(up.get()).map_or(0, Cell::get)
    }

    /// Counts one query to `up` until the guard is dropped.
    pub(super) fn hold(&self, up: UpstreamIdx) -> Counted {
        if let Some(c) = self.0.get(up.get()) {
            c.set(c.get().saturating_add(1));
        }
        Counted {
            counts: Rc::clone(&self.0),
            i: up.get(),
        }
    }
}

/// One query counted in an [`InFlight`].
#[derive(Debug)]
pub(super) struct Counted {
    counts: Rc<[Cell<u32>]>,
    i: usize,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(c) = self.counts.get(self.i) {
            c.set(c.get().saturating_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_counts_while_held() {
        let counts = InFlight::new(2);
        let up = UpstreamIdx::new(1);
        let a = counts.hold(up);
        let b = counts.hold(up);
        let _none = counts.hold(UpstreamIdx::new(7));
        assert_eq!((counts.get(up), counts.get(UpstreamIdx::new(0))), (2, 0));
        drop(a);
        assert_eq!(counts.get(up), 1);
        drop(b);
        assert_eq!(counts.get(up), 0);
    }
}
