//! Upstream indices and what is kept per upstream.
//!
//! An upstream is known by its position in its set's configured list: the shard's
//! [`super::HealthTracker`], the circuit board's slots, the links and the names
//! are all built from that list and indexed the same way. [`UpstreamIdx`] is a
//! type of its own and [`PerUpstream`] is indexed only by it, so none of them can
//! be indexed by an unrelated count or position (a buffer length, a shard number,
//! a position in a plan).

use std::ops::{Index, IndexMut};

/// The position of an upstream in its set's configured list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct UpstreamIdx(u32);

impl UpstreamIdx {
    /// The index of the `i`-th configured upstream. A set holds far fewer than
    /// `u32::MAX` upstreams (the config refuses more than 64).
    pub const fn new(i: usize) -> Self {
        Self(i as u32)
    }

    /// The position in the configured list.
    pub const fn get(self) -> usize {
        self.0 as usize
    }

    /// The indices of a set of `len` upstreams, in order.
    pub fn all(len: usize) -> impl DoubleEndedIterator<Item = Self> + ExactSizeIterator + Clone {
        (0..len).map(Self::new)
    }
}

impl std::fmt::Display for UpstreamIdx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The `i`-th upstream, for tests that number their upstreams.
#[cfg(test)]
pub(crate) const fn upstream(i: usize) -> UpstreamIdx {
    UpstreamIdx::new(i)
}

/// The upstreams numbered `i`, for tests.
#[cfg(test)]
pub(crate) fn upstreams<const N: usize>(i: [usize; N]) -> [UpstreamIdx; N] {
    i.map(UpstreamIdx::new)
}

/// Tests compare indices with the positions they expect written as numbers.
#[cfg(test)]
impl PartialEq<usize> for UpstreamIdx {
    fn eq(&self, other: &usize) -> bool {
        self.get() == *other
    }
}

/// One `T` per upstream of a set, in the set's order, indexed by [`UpstreamIdx`].
#[derive(Debug, Clone, PartialEq)]
pub struct PerUpstream<T>(Vec<T>);

impl<T> PerUpstream<T> {
    /// Number of upstreams.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `up`, None if the set has no such upstream.
    pub fn get(&self, up: UpstreamIdx) -> Option<&T> {
        self.0.get(up.get())
    }

    /// The value of `up` to change, None if the set has no such upstream.
    pub fn get_mut(&mut self, up: UpstreamIdx) -> Option<&mut T> {
        self.0.get_mut(up.get())
    }

    /// The values in the set's order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// The values to change, in the set's order.
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, T> {
        self.0.iter_mut()
    }

    /// Each upstream's index with its value.
    pub fn enumerate(
        &self,
    ) -> impl DoubleEndedIterator<Item = (UpstreamIdx, &T)> + ExactSizeIterator {
        self.0
            .iter()
            .enumerate()
            .map(|(i, v)| (UpstreamIdx::new(i), v))
    }

    /// Every index of the set, in order.
    pub fn indices(
        &self,
    ) -> impl DoubleEndedIterator<Item = UpstreamIdx> + ExactSizeIterator + Clone {
        UpstreamIdx::all(self.0.len())
    }

    /// The values as a slice, in the set's order (for what takes the whole list).
    pub fn as_slice(&self) -> &[T] {
        &self.0
    }
}

impl<T> Default for PerUpstream<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> From<Vec<T>> for PerUpstream<T> {
    fn from(v: Vec<T>) -> Self {
        Self(v)
    }
}

impl<T> FromIterator<T> for PerUpstream<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<T> Index<UpstreamIdx> for PerUpstream<T> {
    type Output = T;

    fn index(&self, up: UpstreamIdx) -> &T {
        &self.0[up.get()]
    }
}

impl<T> IndexMut<UpstreamIdx> for PerUpstream<T> {
    fn index_mut(&mut self, up: UpstreamIdx) -> &mut T {
        &mut self.0[up.get()]
    }
}

impl<'a, T> IntoIterator for &'a PerUpstream<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexed_by_position_in_the_set() {
        let names: PerUpstream<&str> = ["a", "b", "c"].into_iter().collect();
        let idx: Vec<_> = names.indices().collect();
        assert_eq!(
            idx,
            [
                UpstreamIdx::new(0),
                UpstreamIdx::new(1),
                UpstreamIdx::new(2)
            ]
        );
        assert_eq!(names[UpstreamIdx::new(1)], "b");
        assert_eq!(names.get(UpstreamIdx::new(3)), None);
        let pairs: Vec<_> = names.enumerate().map(|(i, n)| (i.get(), *n)).collect();
        assert_eq!(pairs, [(0, "a"), (1, "b"), (2, "c")]);
    }
}
