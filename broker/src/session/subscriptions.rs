//! The patterns a connection holds, as a sorted vector.
//!
//! Why not a `BTreeSet`: its first node is a whole leaf of eleven slots (368 bytes
//! per connection, measured with massif), while most connections hold one to a few
//! patterns. A sorted vector of exactly their number keeps lookups logarithmic, and
//! adding or removing a request's patterns at once keeps a request of thousands
//! linear-logarithmic instead of quadratic.

use crate::topic::Pattern;

#[derive(Debug, Default)]
pub(crate) struct Subscriptions(Vec<Pattern>);

impl Subscriptions {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn contains(&self, p: &Pattern) -> bool {
        self.0.binary_search(p).is_ok()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Pattern> {
        self.0.iter()
    }

    /// Adds patterns the set does not hold yet (the caller checked).
    pub(crate) fn add(&mut self, new: Vec<Pattern>) {
        self.0.extend(new);
        self.0.sort_unstable();
        self.0.shrink_to_fit();
    }

    /// Removes what of `patterns` the set holds; returns those removed.
    pub(crate) fn remove(&mut self, mut patterns: Vec<Pattern>) -> Vec<Pattern> {
        patterns.sort_unstable();
        patterns.dedup();
        patterns.retain(|p| self.contains(p));
        if !patterns.is_empty() {
            self.0.retain(|p| patterns.binary_search(p).is_err());
            self.0.shrink_to_fit();
        }
        patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).expect("a valid pattern")
    }

    #[test]
    fn adds_finds_and_removes_in_order() {
        let mut s = Subscriptions::default();
        s.add(vec![p("b"), p("a.*"), p("c")]);
        assert_eq!(s.len(), 3);
        assert!(s.contains(&p("a.*")) && !s.contains(&p("a")));
        let order: Vec<_> = s.iter().cloned().collect();
        assert_eq!(order, vec![p("a.*"), p("b"), p("c")]);
        // Only what is held comes back, once.
        let removed = s.remove(vec![p("c"), p("x"), p("c")]);
        assert_eq!(removed, vec![p("c")]);
        assert_eq!(s.len(), 2);
        assert!(s.remove(vec![p("x")]).is_empty());
        s.remove(vec![p("a.*"), p("b")]);
        assert_eq!(
            (s.len(), s.0.capacity()),
            (0, 0),
            "an empty set holds no memory"
        );
    }
}
