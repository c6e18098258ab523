//! `Earliest`: a `BinaryHeap` entry that puts the earliest time on top, the first filed among
//! equal times. The shared timer orders calls by when they are due with it, and the session LRU
//! orders sessions by when they were last touched.

use std::cmp::Ordering;

pub struct Earliest<T> {
    pub at: f64,
    pub seq: u64,
    pub item: T,
}

impl<T> PartialEq for Earliest<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Earliest<T> {}

impl<T> PartialOrd for Earliest<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Earliest<T> {
    /// Reversed, so that `BinaryHeap`'s maximum is the earliest time, then the first filed.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .total_cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::Earliest;
    use std::collections::BinaryHeap;

    #[test]
    fn earliest_then_first_filed() {
        let mut heap = BinaryHeap::new();
        for (at, seq) in [(3.0, 1), (1.0, 3), (1.0, 2), (2.0, 4)] {
            heap.push(Earliest { at, seq, item: () });
        }
        let order: Vec<(f64, u64)> =
            std::iter::from_fn(|| heap.pop().map(|e| (e.at, e.seq))).collect();
        assert_eq!(order, [(1.0, 2), (1.0, 3), (2.0, 4), (3.0, 1)]);
    }
}
